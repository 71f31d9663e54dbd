"""A router replica that hangs is left for the live one, not called every other time.

Found by a black-box fault audit: two real ``router-service`` replicas behind the
sidecar's ``round_robin`` target (as ``k8s/`` deploys them, a headless Service),
one of them stopped with SIGSTOP (a frozen process or node, or a path that drops
packets: its TCP connection stays "up"). Its connection stayed READY, so every
other RankProviders call went to it and failed at its deadline; a request whose
preferences had no cached ranking then got a 503 ``router_unavailable`` after a
second while the other replica was serving, for as long as the replica hung
(still so after a minute). Keepalive pings with a timeout now close that
connection, and round_robin skips the replica until it answers again.
"""

from __future__ import annotations

import itertools
import signal

import aiohttp
from sidecar_helpers import MODEL, Stack, router_process, wait_for


async def test_a_hung_replica_is_left_for_the_live_one(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    catalog = str(stack.catalog_path)
    keys = itertools.count()
    with router_process(catalog) as (_, live), router_process(catalog) as (hung, stopped):
        sc = await stack.start_sidecar(f"ipv4:{live},{stopped}")

        async def fresh_keys_ranked_by_a_router() -> bool:
            """Ten requests, each with preferences no ranking is cached for (no
            fallback catalog: a failed ranking call is a 503), all ranked by a router."""
            async with aiohttp.ClientSession() as s:
                for _ in range(10):
                    body = {
                        "model": MODEL,
                        "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 2,
                        "provider": {"max_price": {"prompt": 1000 + next(keys)}},
                    }
                    async with s.post(sc.base_url + "/chat/completions", json=body) as r:
                        answer = await r.json()
                        if r.status != 200 or answer["routing"]["source"] != "router":
                            return False
            return True

        assert await fresh_keys_ranked_by_a_router()  # both replicas answer
        hung.send_signal(signal.SIGSTOP)
        try:
            assert not await fresh_keys_ranked_by_a_router()  # the fault is real
            # keepalive: a ping every 15 s, 5 s for its answer
            await wait_for(fresh_keys_ranked_by_a_router, timeout=45, interval=0.5)
        finally:
            hung.send_signal(signal.SIGCONT)
