"""What RankProviders answers, checked against the proto's promises (a black-box audit).

Each test starts a real router on loopback and talks to it over real gRPC,
as a client written in another language would: outcomes go in with
RecordOutcome, and the answer is read field by field against what
``proto/router/v1/router.proto`` and README.md say it carries. The router
runs on a FakeClock, so "recent", "stale" and ejection times are set by the
test, never by sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from router_common.pb import router_pb2, router_pb2_grpc
from tests.conftest import FakeClock, loopback_router, wait_for
from tests.router.pb_builders import MODEL, outcome, rank_request
from tests.router.pb_builders import failure as _failure


def success(clock: FakeClock, provider: str, ttft_ms: float) -> router_pb2.Outcome:
    return outcome(provider, started_at=clock.now, ttft_ms=ttft_ms, duration_ms=ttft_ms + 500.0)


def failure(clock: FakeClock, provider: str) -> router_pb2.Outcome:
    return _failure(provider, started_at=clock.now)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def stub(tmp_path: Path, clock: FakeClock) -> AsyncIterator[router_pb2_grpc.RouterStub]:
    app = loopback_router(tmp_path, clock=clock, drain_seconds=1.0, seed=7)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.grpc_address) as channel:
            yield router_pb2_grpc.RouterStub(channel)
    finally:
        await app.stop()


async def test_ejected_reason_carries_ejected_until_as_get_health_does(stub, clock) -> None:
    """The proto: `ejected` (ejected until `numbers.ejected_until`)."""
    ack = await stub.RecordOutcome(
        router_pb2.RecordOutcomeRequest(outcomes=[failure(clock, "deepinfra") for _ in range(5)])
    )
    assert ack.accepted == 5

    async def ejected() -> router_pb2.ExcludedEndpoint | None:
        response = await stub.RankProviders(rank_request(sort=router_pb2.SORT_BY_COST))
        return next((x for x in response.metadata.excluded if x.provider == "deepinfra"), None)

    excluded = await wait_for(ejected)
    assert excluded.reason.code == "ejected"
    health = await stub.GetHealth(router_pb2.GetHealthRequest(model=MODEL))
    view = next(e for e in health.endpoints if e.provider == "deepinfra")
    assert view.state == router_pb2.HEALTH_STATE_EJECTED
    assert view.HasField("ejected_until") and view.ejected_until > clock.now
    assert excluded.reason.numbers["ejected_until"] == pytest.approx(view.ejected_until)


async def test_timeout_and_hedge_suggestions_do_not_move_with_the_requested_percentile(
    stub, clock
) -> None:
    """The proto: `first_token_timeout_ms` is a multiple of the endpoint's recent p99 TTFT,
    `hedge_after_ms` its recent p95: facts about the endpoint, the same whichever
    percentile the request sorts by (they used to follow the P99 sort's scaled TTFT)."""
    outcomes = [success(clock, "cerebras", 100.0 + 10.0 * i) for i in range(30)]
    ack = await stub.RecordOutcome(router_pb2.RecordOutcomeRequest(outcomes=outcomes))
    assert ack.accepted == 30

    async def ranked(percentile: int) -> router_pb2.RankedEndpoint | None:
        response = await stub.RankProviders(
            rank_request(sort=router_pb2.SORT_BY_TTFT, percentile=percentile, only=["cerebras"])
        )
        entry = response.endpoints[0]
        return entry if entry.HasField("hedge_after_ms") and entry.ttft_samples >= 30 else None

    p50 = await wait_for(lambda: ranked(router_pb2.PERCENTILE_P50))
    p99 = await ranked(router_pb2.PERCENTILE_P99)
    assert p99 is not None
    assert p50.window == p99.window == "recent"
    assert p99.ttft_ms > p50.ttft_ms  # the ranked TTFT does follow the percentile
    assert p99.hedge_after_ms == pytest.approx(p50.hedge_after_ms)
    assert p99.first_token_timeout_ms == pytest.approx(p50.first_token_timeout_ms)
    assert 0 < p50.hedge_after_ms <= p50.first_token_timeout_ms <= 600_000


@pytest.mark.parametrize("sort", [router_pb2.SORT_BY_UNSPECIFIED, router_pb2.SORT_BY_TTFT])
async def test_exploration_pick_carries_the_exploration_reason(stub, sort) -> None:
    """The proto lists `exploration` among the reason codes ("put first: thin or stale
    data, refreshed on purpose"); it was computed but never sent. The pick now carries
    it as its reason, in place of the one that had moved it down (on a fresh router,
    `no_data_for_sort`), and the metadata lists it with the others."""

    async def explored() -> router_pb2.RankProvidersResponse | None:
        response = await stub.RankProviders(rank_request(sort=sort))
        return response if response.metadata.exploration else None

    # A fresh router explores a quarter of its rankings (`exploration_share_unknown`).
    response = await wait_for(explored)
    first = response.endpoints[0]
    assert first.exploration and first.explorable
    assert [e.exploration for e in response.endpoints].count(True) == 1
    assert first.deprioritized.code == "exploration"
    assert first.deprioritized.numbers["samples_5m"] == 0
    assert first.provider.name in first.deprioritized.detail
    listed = {x.provider: x.reason.code for x in response.metadata.deprioritized}
    assert listed[first.provider.name] == "exploration"
    assert "exploration" not in {e.deprioritized.code for e in response.endpoints[1:]}


async def test_a_request_with_order_never_explores_even_with_a_sort(stub) -> None:
    """`exploration_share` is 0 "under `order`": that is strategy `order+sort` too (the
    request named who goes first), while the same sort without `order` explores."""
    plain = await stub.RankProviders(rank_request(sort=router_pb2.SORT_BY_TTFT))
    assert plain.metadata.exploration_share == pytest.approx(0.25)  # fresh: never measured
    assert all(e.explorable for e in plain.endpoints)
    for _ in range(40):  # at a share of 0.25, 40 rankings without one: 1e-5
        ordered = await stub.RankProviders(
            rank_request(sort=router_pb2.SORT_BY_TTFT, order=["baseten"])
        )
        assert ordered.metadata.strategy == "order+sort"
        assert ordered.metadata.exploration_share == 0
        assert not ordered.metadata.exploration
        assert ordered.endpoints[0].provider.name == "baseten"
        assert not any(e.explorable or e.exploration for e in ordered.endpoints)


async def test_panic_returns_the_ejected_with_their_reason_and_nothing_to_explore(
    stub, clock
) -> None:
    """Every endpoint ejected: strategy `panic`, all of them returned (least recently
    failed first), each with its `ejected` reason (and `numbers.ejected_until`) as
    `deprioritized`, none `excluded`, and an exploration share of 0."""
    model = "meta/llama-3.3-70b"
    providers = ["cerebras", "groq", "together", "deepinfra"]
    for i, provider in enumerate(providers):
        clock.advance(1.0)  # deepinfra fails last, cerebras first
        outcomes = [failure(clock, provider) for _ in range(5)]
        for o in outcomes:
            o.model = model
        ack = await stub.RecordOutcome(router_pb2.RecordOutcomeRequest(outcomes=outcomes))
        assert ack.accepted == 5, i
    response = await stub.RankProviders(
        router_pb2.RankProvidersRequest(
            model=model, preferences=router_pb2.RoutingPreferences(sort=router_pb2.SORT_BY_COST)
        )
    )
    meta = response.metadata
    assert meta.strategy == "panic" and meta.panic
    assert list(meta.execution_order) == providers  # least recently failed first
    assert not meta.excluded and meta.exploration_share == 0 and not meta.exploration
    for entry in response.endpoints:
        assert entry.health == router_pb2.HEALTH_STATE_EJECTED
        assert entry.deprioritized.code == "ejected"
        assert entry.deprioritized.numbers["ejected_until"] > clock.now
        assert not entry.explorable
    assert [d.provider for d in meta.deprioritized] == providers


async def test_get_health_gives_a_reason_exactly_when_it_has_evidence(stub, clock) -> None:
    """EndpointHealth.reason: "Empty, with `since` 0, for an endpoint this router has had
    no outcome for". An endpoint with outcomes that stayed HEALTHY had an empty reason
    beside a non-zero `since`."""
    outcomes = [success(clock, "cerebras", 120.0) for _ in range(3)]
    ack = await stub.RecordOutcome(router_pb2.RecordOutcomeRequest(outcomes=outcomes))
    assert ack.accepted == 3
    health = await stub.GetHealth(router_pb2.GetHealthRequest(model=MODEL))
    by_name = {e.provider: e for e in health.endpoints}
    seen = by_name.pop("cerebras")
    assert seen.state == router_pb2.HEALTH_STATE_HEALTHY
    assert seen.since == pytest.approx(clock.now) and seen.reason
    assert not seen.HasField("ejected_until") and seen.consecutive_failures == 0
    for unseen in by_name.values():
        assert unseen.state == router_pb2.HEALTH_STATE_HEALTHY
        assert (unseen.reason, unseen.since) == ("", 0.0)
