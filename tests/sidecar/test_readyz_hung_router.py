"""``/readyz`` asks the router's health service, not only whether a TCP connection is up.

Found by a black-box audit: with the router process stopped (SIGSTOP: hung,
its connection still open), every ranking call timed out but ``/readyz`` said
``router_reachable: true`` because the gRPC channel was still READY. A real
``router-service`` process, stopped and continued; a real sidecar.
"""

from __future__ import annotations

import signal
from typing import Any

import aiohttp
from grpc_health.v1 import health_pb2
from sidecar_helpers import Stack, router_process, wait_for


async def _ready(sc) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(sc.base_url.removesuffix("/v1") + "/readyz") as r,
    ):
        return r.status, await r.json()


async def test_a_hung_router_is_not_reachable(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    with router_process(str(stack.catalog_path)) as (proc, address):
        sc = await stack.start_sidecar(address)
        status, body = await _ready(sc)
        assert (status, body["router_reachable"]) == (200, True)
        proc.send_signal(signal.SIGSTOP)
        try:
            status, body = await _ready(sc)
            assert (status, body["router_reachable"], body["ready"]) == (503, False, False)
        finally:
            proc.send_signal(signal.SIGCONT)
        await wait_for(lambda: _ready_ok(sc), timeout=10)


async def _ready_ok(sc) -> bool:
    status, body = await _ready(sc)
    return status == 200 and body["router_reachable"] is True


async def test_a_router_answering_not_serving_still_counts_as_reachable(stack: Stack) -> None:
    """A replica draining for a restart says NOT_SERVING while the others behind the same
    round-robin target serve: readiness must not flap with it."""
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(router.grpc_address)
    await router._health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    status, body = await _ready(sc)
    assert (status, body["router_reachable"]) == (200, True)
