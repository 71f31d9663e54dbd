"""Stale-while-revalidate of cached rankings, against a real router over gRPC.

The router and the sidecar's ranking client share one injected clock, so
expiry, ejection and probing are driven without waiting on wall time.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from router_common.pb import router_pb2, router_pb2_grpc
from router_service.app import RouterApp
from router_service.health import HealthConfig
from router_service.ranking import RankingConfig
from sidecar.config import SidecarSettings
from sidecar.preferences import parse_request
from sidecar.ranking_client import RankingClient
from tests.conftest import FakeClock, loopback_router, wait_for

MODEL = "zai/glm-4.7"
CHEAPEST = "deepinfra"


class CountingStub:
    """The real stub, counting RankProviders calls (everything is forwarded)."""

    def __init__(self, stub: router_pb2_grpc.RouterStub) -> None:
        self._stub = stub
        self.rank_calls = 0

    async def RankProviders(self, *args: Any, **kw: Any) -> Any:
        self.rank_calls += 1
        return await self._stub.RankProviders(*args, **kw)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[FakeClock, RouterApp, CountingStub]]:
    clock = FakeClock()
    app = loopback_router(
        tmp_path,
        clock,
        drain_seconds=0.2,
        watch_catalog=False,
        seed=7,
        health=HealthConfig(base_ejection_s=10.0, ejection_jitter=0.0),
        # These tests follow one probe; exploration would move other endpoints first.
        ranking=RankingConfig(exploration_share=0, exploration_share_unknown=0),
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.grpc_address) as channel:
            yield clock, app, CountingStub(router_pb2_grpc.RouterStub(channel))
    finally:
        await app.stop()


def _client(clock: FakeClock, stub: CountingStub, revalidate_s: float = 3.0) -> RankingClient:
    settings = SidecarSettings(rank_cache_ttl_s=2.0, rank_revalidate_s=revalidate_s)
    return RankingClient(settings, stub, None, clock=clock, rng=random.Random(1))  # type: ignore[arg-type]


REQ = parse_request(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "provider": {"sort": "price"}}
)


async def test_expired_ranking_is_served_while_one_background_call_refreshes_it(
    setup: tuple[FakeClock, RouterApp, CountingStub],
) -> None:
    clock, _, stub = setup
    rc = _client(clock, stub)
    first = await rc.rank(REQ)
    assert first.source == "router" and stub.rank_calls == 1

    clock.now += 1.0  # fresh: no call
    assert rc.cached(REQ).source == "cache"  # type: ignore[union-attr]
    assert stub.rank_calls == 1

    clock.now += 1.5  # past the TTL, within the revalidation window
    stale = rc.cached(REQ)
    assert stale is not None and stale.source == "cache"
    assert rc.cached(REQ) is not None  # a second request meanwhile: no second call
    assert rc.refreshes_in_flight == 1
    await wait_for(lambda: rc.refreshes_in_flight == 0)
    assert stub.rank_calls == 2

    clock.now += 1.0  # the refreshed entry is fresh again: no call
    assert rc.cached(REQ) is not None and rc.refreshes_in_flight == 0
    assert stub.rank_calls == 2

    clock.now += 10.0  # past TTL + window: the request waits for the router
    assert rc.cached(REQ) is None
    assert (await rc.rank(REQ)).source == "router" and stub.rank_calls == 3
    await rc.close()


async def test_a_probe_from_a_background_refresh_goes_to_the_next_request_only(
    setup: tuple[FakeClock, RouterApp, CountingStub],
) -> None:
    clock, _, stub = setup
    rc = _client(clock, stub, revalidate_s=60.0)
    assert (await rc.rank(REQ)).routes[0].provider == CHEAPEST

    failures = [
        router_pb2.Outcome(
            model=MODEL,
            provider=CHEAPEST,
            started_at=clock.now,
            success=False,
            error_class=router_pb2.ERROR_CLASS_SERVER_ERROR,
            http_status=503,
            duration_ms=30.0,
        )
        for _ in range(5)
    ]
    await stub._stub.RecordOutcome(router_pb2.RecordOutcomeRequest(outcomes=failures))
    clock.now += 11.0  # ejection over: the router's next answer probes deepinfra first;
    # the cached ranking is past its TTL but inside the (long) revalidation window

    stale = rc.cached(REQ)
    assert stale is not None and stale.source == "cache"
    await wait_for(lambda: rc.refreshes_in_flight == 0)

    probe = rc.cached(REQ)
    assert probe is not None and probe.source == "router"
    assert probe.routes[0].provider == CHEAPEST and probe.routes[0].router_wants_it
    after = rc.cached(REQ)  # the probe was for one request: the reused copy puts it last
    assert after is not None and after.source == "cache"
    assert after.routes[-1].provider == CHEAPEST and not after.routes[-1].router_wants_it
    assert stub.rank_calls == 2
    await rc.close()
