"""The dashboard's short-bucket history: counts, percentiles, health per interval, bounds."""

from __future__ import annotations

import random

import pytest

from router_common.domain import EndpointKey, ErrorClass
from router_service.dashboard_series import DashboardSeries
from router_service.health import Transition
from router_service.model import HealthState, Outcome
from tests.conftest import FakeClock

KEY = EndpointKey("zai/glm-4.7", "cerebras")
H, D, E, P = (
    HealthState.HEALTHY,
    HealthState.DEGRADED,
    HealthState.EJECTED,
    HealthState.PROBING,
)


def ok(at: float, ttft: float = 100.0, tps: float = 500.0) -> Outcome:
    return Outcome(KEY, at, True, ttft_ms=ttft, tokens_per_second=tps)


def failed(at: float, cls: ErrorClass = ErrorClass.SERVER_ERROR) -> Outcome:
    return Outcome(KEY, at, False, error_class=cls, http_status=503)


def make() -> tuple[DashboardSeries, FakeClock]:
    clock = FakeClock(1_800_000_000.0)  # a multiple of 60: buckets start at "now"
    return DashboardSeries(clock), clock


def test_percentiles_per_interval_are_within_two_percent() -> None:
    series, clock = make()
    values = [random.Random(1).lognormvariate(5, 0.5) for _ in range(200)]
    series.record_many(ok(clock.now + 1, ttft=v) for v in values)
    clock.advance(5)
    last = series.points(KEY, "15m", H, 5)[-1]
    ranked = sorted(values)
    assert last["attempts"] == 200 and last["uptime"] == 1.0
    assert last["ttft_p50"] == pytest.approx(ranked[99], rel=0.02)
    assert last["ttft_p95"] == pytest.approx(ranked[189], rel=0.02)
    assert last["throughput_p50"] == pytest.approx(500, rel=0.02)


def test_few_samples_are_counted_not_plotted_and_client_errors_not_counted() -> None:
    series, clock = make()
    series.record_many([ok(clock.now)] * 4 + [failed(clock.now, ErrorClass.CLIENT_ERROR)])
    last = series.points(KEY, "5m", H, 5)[-1]
    assert (last["attempts"], last["ttft_p50"], last["health"]) == (4, None, "healthy")


def test_ranges_have_their_bucket_widths_and_counts() -> None:
    series, clock = make()
    series.record_many([ok(clock.now - 90)] * 5)  # 90 s ago: 9 fine buckets back, 2 minutes back
    for name, width, count, back in (("5m", 10, 30, 10), ("15m", 10, 90, 10), ("1h", 60, 60, 3)):
        points = series.points(KEY, name, H, 5)
        assert len(points) == count
        assert {p["end"] - p["start"] for p in points} == {width}
        assert points[-1]["start"] <= clock.now < points[-1]["end"]
        assert points[-back]["attempts"] == 5, name


def test_health_is_the_worst_state_of_each_interval_and_no_data_without_calls() -> None:
    series, clock = make()
    t0 = clock.now
    series.record_many([ok(t0 + 1)] * 5)
    series.on_transition(Transition(KEY, H, D, "slow", t0 + 12))
    series.on_transition(Transition(KEY, D, E, "failing", t0 + 14))
    series.on_transition(Transition(KEY, E, P, "probing", t0 + 35))
    series.on_transition(Transition(KEY, P, H, "recovered", t0 + 36))
    clock.advance(59)
    health = [p["health"] for p in series.points(KEY, "5m", H, 5)[-6:]]
    # [0,10): called, healthy; [10,20): degraded then ejected → ejected; [20,30): ejected
    # all along; [30,40): ejected, probing, healthy → ejected; later: healthy, not called.
    assert health == ["healthy", "ejected", "ejected", "ejected", "no_data", "no_data"]
    # Before the router heard of the endpoint: no data, whatever its state now.
    assert series.points(KEY, "5m", E, 5)[0]["health"] == "no_data"


def test_unknown_endpoint_and_stale_outcomes() -> None:
    series, clock = make()
    assert {p["health"] for p in series.points(KEY, "1h", H, 5)} == {"no_data"}
    series.record_many([ok(clock.now - 3 * 3600)])  # older than every ring: dropped
    series.record_many([ok(clock.now + 3600)])  # from the future: clamped to now
    assert sum(p["attempts"] for p in series.points(KEY, "1h", H, 5)) == 1


def test_memory_is_bounded_whatever_the_traffic() -> None:
    series, clock = make()
    rng = random.Random(2)
    for _ in range(400):  # 400 distinct 10 s buckets, spread-out values
        series.record_many(ok(clock.now, ttft=rng.uniform(1, 600_000)) for _ in range(50))
        clock.advance(10)
    state = series._endpoints[KEY]
    assert sum(1 for b in state.rings["fine"].slots if b) <= 90
    assert sum(1 for b in state.rings["hour"].slots if b) <= 60
    for ring in state.rings.values():
        for b in ring.slots:
            assert b is None or len(b.ttft) <= 700  # 2% bins over 1 ms .. 10 min


def test_retain_forgets_endpoints_that_left_the_catalog() -> None:
    series, clock = make()
    series.record_many([ok(clock.now)])
    series.retain([])
    assert {p["attempts"] for p in series.points(KEY, "5m", H, 5)} == {0}
