"""A router that hangs (SIGSTOP: its connection stays open) costs requests no waiting.

Found by a black-box fault audit, with real ``router-service`` processes.

A hung replica is left for the live one, not called every other time: two real
``router-service`` replicas behind the sidecar's ``round_robin`` target (as
``k8s/`` deploys them, a headless Service),
one of them stopped with SIGSTOP (a frozen process or node, or a path that drops
packets: its TCP connection stays "up"). Its connection stayed READY, so every
other RankProviders call went to it and failed at its deadline; a request whose
preferences had no cached ranking then got a 503 ``router_unavailable`` after a
second while the other replica was serving, for as long as the replica hung
(still so after a minute). Keepalive pings with a timeout now close that
connection, and round_robin skips the replica until it answers again.

A hung router is retried in the background while a stale ranking serves: with
one router stopped, every ``router_retry_s`` the next request for a long-expired
ranking asked it again in the foreground and waited ``rank_timeout_s``, and so
did every request arriving meanwhile: about half the traffic a second late at
the defaults, until the keepalive ping gave up on the connection (about 20 s;
without keepalive, for as long as it hung).
"""

from __future__ import annotations

import itertools
import signal
import time

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


async def test_a_hung_router_is_retried_in_the_background_while_stale_rankings_serve(
    stack: Stack,
) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    with router_process(str(stack.catalog_path)) as (router, address):
        # TTL 0.05 s and no revalidate window: a ranking is long expired 0.05 s on.
        sc = await stack.start_sidecar(
            address, rank_cache_ttl_s=0.05, rank_revalidate_s=0.0, rank_timeout_s=0.5
        )
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        async with aiohttp.ClientSession() as http:

            async def timed() -> tuple[float, str]:
                started = time.monotonic()
                async with http.post(sc.base_url + "/chat/completions", json=body) as r:
                    assert r.status == 200
                    source = (await r.json())["routing"]["source"]
                return time.monotonic() - started, source

            async def router_seen_down() -> bool:
                await timed()
                return sc.ranking.router_ok is False

            async def ranked_by_the_router_again() -> bool:
                return (await timed())[1] in ("router", "cache")

            assert (await timed())[1] == "router"
            router.send_signal(signal.SIGSTOP)
            try:
                await wait_for(router_seen_down, timeout=10)
                # Requests over several retry windows: none waits for the stopped router.
                slowest, sources = 0.0, set()
                until = time.monotonic() + 5 * sc.settings.router_retry_s
                while time.monotonic() < until:
                    took, source = await timed()
                    slowest, sources = max(slowest, took), sources | {source}
                assert sources == {"stale"}
                assert slowest < sc.settings.rank_timeout_s / 2, slowest
            finally:
                router.send_signal(signal.SIGCONT)
            # Back: a background retry finds it, and rankings come from it again.
            await wait_for(ranked_by_the_router_again, timeout=10)


async def test_the_model_list_does_not_wait_on_a_router_that_just_failed(stack: Stack) -> None:
    """Every ``GET /v1/models`` asked the hung router again and waited ``rank_timeout_s``;
    now, like rankings, it serves the last list while the router is being skipped."""
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    with router_process(str(stack.catalog_path)) as (router, address):
        sc = await stack.start_sidecar(address, rank_timeout_s=0.5, router_retry_s=30.0)
        url = sc.base_url + "/models"
        async with aiohttp.ClientSession() as http:

            async def listed() -> tuple[float, list[str]]:
                started = time.monotonic()
                async with http.get(url) as r:
                    assert r.status == 200
                    ids = [m["id"] for m in (await r.json())["data"]]
                return time.monotonic() - started, ids

            _, ids = await listed()
            assert ids == [MODEL]
            router.send_signal(signal.SIGSTOP)
            try:
                await listed()  # this one finds the router hung (0.5 s)
                for _ in range(3):
                    took, again = await listed()
                    assert again == ids and took < 0.25, took
            finally:
                router.send_signal(signal.SIGCONT)


async def test_a_model_list_refused_for_its_scope_leaves_rankings_to_the_router(
    stack: Stack,
) -> None:
    """The sidecar's token as ``k8s/`` gives it (``rank``, ``report``; no ``read``): the
    router refuses ListModels, which must not count as the router being down."""
    from router_service.security import SecuritySettings

    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    tokens = stack.tmp / "tokens.yaml"
    tokens.write_text(
        "callers:\n  app-sidecars: {token_file: sidecar-token, scopes: [rank, report]}\n"
    )
    (stack.tmp / "sidecar-token").write_text("sidecar-token-1\n")
    router = await stack.start_router(security=SecuritySettings(auth_tokens=str(tokens)))
    sc = await stack.start_sidecar(
        router.grpc_address,
        fallback=True,
        router_token_file=str(stack.tmp / "sidecar-token"),
        rank_cache_ttl_s=0.0,
        router_retry_s=30.0,
    )
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with aiohttp.ClientSession() as http:
        async with http.get(sc.base_url + "/models") as r:
            assert r.status == 200  # the fallback catalog's list
        async with http.post(sc.base_url + "/chat/completions", json=body) as r:
            assert r.status == 200
            assert (await r.json())["routing"]["source"] == "router"


async def test_a_model_the_fallback_catalog_lacks_is_asked_of_the_router_not_refused(
    stack: Stack,
) -> None:
    """After a failed call, a request the fallback could serve does not wait for the
    router; one for a model the fallback catalog does not list still asks it (it may
    know the model) rather than answering a 404 from the catalog."""
    await stack.add_providers({"alpha": {}})
    router_catalog = stack.write_catalog()
    router = await stack.start_router()
    port = router.grpc_port
    fallback = stack.tmp / "fallback.yaml"
    fallback.write_text(router_catalog.read_text().replace(MODEL, "other/model"))
    stack.catalog_path = fallback
    sc = await stack.start_sidecar(
        router.grpc_address,
        fallback=True,
        outcome_flush_interval_s=60.0,  # no delivery tells it the router is back
        outcome_max_backoff_s=60.0,
        outcome_urgent_min_gap_s=0.0,
    )
    stack.catalog_path = router_catalog
    await stack.stop_router()

    async def ask(model: str) -> tuple[int, dict]:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        async with (
            aiohttp.ClientSession() as http,
            http.post(sc.base_url + "/chat/completions", json=body) as r,
        ):
            return r.status, await r.json()

    status, answer = await ask("other/model")
    assert (status, answer["routing"]["source"]) == (200, "catalog")
    assert sc.ranking.router_ok is False
    await stack.start_router(port=port)

    async def router_back() -> bool:
        async with (
            aiohttp.ClientSession() as http,
            http.get(sc.base_url.removesuffix("/v1") + "/readyz") as r,
        ):
            return (await r.json())["router_reachable"] is True

    await wait_for(router_back, timeout=10)
    await wait_for(lambda: not sc.ranking.router_skipped)
    assert sc.ranking.router_ok is False
    status, answer = await ask(MODEL)
    assert status == 200, answer
    assert answer["routing"]["source"] == "router"
