"""At shutdown the sidecar delivers its whole outcome backlog, or says what it could not.

Found by a black-box fault audit: a router away for a while leaves a backlog
(up to ``--outcome-queue-size``, 10,000); a sidecar stopped soon after it came
back sent one last StreamOutcomes call, which carries at most 8 batches, and
dropped the rest without a word. Real router, real sidecar, real providers.
"""

from __future__ import annotations

import logging

import aiohttp
import pytest
from sidecar_helpers import MODEL, Stack, wait_for

#: One outcome per batch, so a handful of requests is more than one call carries (8);
#: the sender, once failing, waits a minute before trying again: only the shutdown
#: flush can deliver what the requests below leave behind.
_SETTINGS = {
    "outcome_batch_size": 1,
    "outcome_max_backoff_s": 60.0,
    "outcome_urgent_min_gap_s": 0.0,
}
_REQUESTS = 12


async def _answered(sc) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        for _ in range(_REQUESTS):
            async with s.post(sc.base_url + "/chat/completions", json=body) as r:
                assert r.status == 200


async def _router_reachable(sc) -> bool:
    async with (
        aiohttp.ClientSession() as s,
        s.get(sc.base_url.removesuffix("/v1") + "/readyz") as r,
    ):
        return (await r.json())["router_reachable"] is True


async def test_the_whole_backlog_reaches_a_router_that_is_back(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    router = await stack.start_router()
    port = router.grpc_port
    sc = await stack.start_sidecar(router.grpc_address, fallback=True, **_SETTINGS)
    await stack.stop_router()
    await _answered(sc)
    await wait_for(lambda: sc.reporter.backlog == _REQUESTS and sc.reporter.failures >= 1)
    router = await stack.start_router(port=port)
    await wait_for(lambda: _router_reachable(sc), timeout=10)
    await sc.stop()
    assert sc.reporter.backlog == 0
    await wait_for(lambda: sum(router.core.outcomes_by_class.values()) == _REQUESTS, timeout=5)


async def test_what_cannot_be_delivered_at_shutdown_is_logged(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(router.grpc_address, fallback=True, **_SETTINGS)
    await stack.stop_router()
    await _answered(sc)
    await wait_for(lambda: sc.reporter.backlog == _REQUESTS and sc.reporter.failures >= 1)
    with caplog.at_level(logging.WARNING, logger="sidecar.outcomes"):
        await sc.stop()
    lost = [r for r in caplog.records if r.getMessage() == "outcomes not delivered at shutdown"]
    assert len(lost) == 1 and lost[0].outcomes == _REQUESTS  # type: ignore[attr-defined]
