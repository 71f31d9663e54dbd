"""What an app leaving mid-request must not do to anyone else (found by a leak audit).

A real ``router-service`` process (stopped with SIGSTOP to hold a ranking call
open, as a hung router would), a real sidecar, fake providers; the apps are
plain HTTP clients that drop their connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import aiohttp
from sidecar_helpers import MODEL, Stack, router_process, wait_for

MSGS = [{"role": "user", "content": "hi"}]


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> int:
    async with session.post(url, json=body) as resp:
        await resp.read()
        return resp.status


async def test_an_app_leaving_while_a_ranking_is_shared_does_not_end_the_others(
    stack: Stack,
) -> None:
    """Two requests with the same (model, preferences) share one RankProviders call.
    The first one's app leaves while the router is hung: the second must still be
    answered once the router is back. Before the fix the shared call ran in the
    first request's task, so its cancellation ended the second request too (its
    connection dropped, counted 499 although its app never left)."""
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    with router_process(str(stack.catalog_path)) as (proc, address):
        # A long ranking deadline: the call must outlive the stop, not time out.
        sc = await stack.start_sidecar(address, rank_timeout_s=30.0)
        url = sc.base_url + "/chat/completions"
        async with aiohttp.ClientSession() as session:
            warm = {"model": MODEL, "messages": MSGS, "max_tokens": 2}
            assert await _post(session, url, warm) == 200  # the channel is up
            shared = {**warm, "provider": {"sort": "price"}}  # a key not cached yet
            proc.send_signal(signal.SIGSTOP)
            try:
                first = asyncio.create_task(_post(session, url, shared))
                await wait_for(lambda: len(sc.ranking._inflight) == 1, timeout=5)
                second = asyncio.create_task(_post(session, url, shared))
                await wait_for(lambda: len(sc._inflight) == 2, timeout=5)
                first.cancel()  # its app leaves, dropping the connection
                with contextlib.suppress(asyncio.CancelledError):
                    await first
                await wait_for(lambda: sc.metrics.requests.labels("499")._value.get() == 1, 5)
                assert not second.done()
            finally:
                proc.send_signal(signal.SIGCONT)
            assert await asyncio.wait_for(second, 20) == 200
        assert sc.metrics.requests.labels("499")._value.get() == 1
        assert not sc.ranking._inflight  # the shared call is gone once answered


async def test_outcome_delivery_backs_off_during_an_outage_however_full_the_queue(
    stack: Stack,
) -> None:
    """Found by a leak audit: with the router down and traffic flowing, every outcome
    queued beyond a batch's worth woke the sender past its backoff, so it retried
    StreamOutcomes about every 10 ms (700 failed calls and WARNING lines in ten
    seconds of outage at 300 requests/s), and every sidecar would hammer a router
    coming back. A full queue cannot make a failing router answer sooner: retries
    follow the backoff (here 0.05 s doubling to 0.4 s) whatever the traffic."""
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(
        router.grpc_address,
        fallback=True,  # requests are still served from the catalog while it is down
        outcome_batch_size=2,  # a couple of requests fill a batch
        outcome_max_backoff_s=0.4,
    )
    url = sc.base_url + "/chat/completions"
    body = {"model": MODEL, "messages": MSGS, "max_tokens": 2}
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        assert await _post(session, url, body) == 200
        await wait_for(lambda: sc.reporter.backlog == 0, timeout=5)  # delivered
        await stack.stop_router()
        before = sc.reporter.failures
        began = loop.time()
        for _ in range(100):
            assert await _post(session, url, body) == 200
        elapsed = loop.time() - began
    failed_calls = sc.reporter.failures - before
    # Backoff: 0.05, 0.1, 0.2, then every 0.4 s (plus one for timing at each end).
    bound = 5 + elapsed / 0.4
    assert failed_calls <= bound, f"{failed_calls} failed calls in {elapsed:.2f} s"
