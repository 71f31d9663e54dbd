"""Rolling windows and the stats store, driven by a fake clock (no sleeps)."""

from __future__ import annotations

import numpy as np
import pytest

from router_common.domain import EndpointKey, ErrorClass
from router_service.model import EMPTY_STATS, RANKING_QUANTILES, Outcome
from router_service.sketches.store import InMemoryStatsStore, StatsStore
from router_service.sketches.tdigest import TDigest
from router_service.sketches.windows import FINE, HOUR, EndpointWindows
from tests.conftest import FakeClock

KEY = EndpointKey("zai/glm-4.7", "cerebras")
OTHER = EndpointKey("zai/glm-4.7", "groq")
T0 = 1_700_000_000.0 - (1_700_000_000.0 % 3600)  # aligned to the hour


def ok(ts: float, ttft: float = 100.0, tps: float = 50.0, key: EndpointKey = KEY) -> Outcome:
    return Outcome(endpoint=key, timestamp=ts, success=True, ttft_ms=ttft, tokens_per_second=tps)


def fail(ts: float, error: ErrorClass = ErrorClass.SERVER_ERROR) -> Outcome:
    return Outcome(endpoint=KEY, timestamp=ts, success=False, error_class=error, http_status=500)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def store(clock: FakeClock) -> InMemoryStatsStore:
    return InMemoryStatsStore(clock=clock)


def test_store_implements_protocol(store: InMemoryStatsStore) -> None:
    assert isinstance(store, StatsStore)


def test_unknown_endpoint_is_empty(store: InMemoryStatsStore) -> None:
    assert store.stats(KEY) is EMPTY_STATS
    assert store.snapshot([KEY]) == {KEY: EMPTY_STATS}
    assert store.keys() == frozenset()
    assert store.bucket_digests(KEY) == []
    assert all(p.attempts == 0 and p.ttft_p50 is None for p in store.timeseries(KEY))


def test_record_is_invisible_until_refresh(store: InMemoryStatsStore, clock: FakeClock) -> None:
    store.record(ok(clock.now, ttft=123.0))
    assert store.stats(KEY) is EMPTY_STATS
    store.refresh()
    stats = store.stats(KEY)
    assert stats.ttft_5m.count == stats.ttft_1h.count == stats.ttft_1d.count == 1
    assert stats.ttft_5m.get(0.5) == 123.0
    assert set(stats.ttft_1h.quantiles) == set(RANKING_QUANTILES)
    assert stats.tps_1h.get(0.95) == 50.0
    assert stats.uptime_15m.attempts == stats.uptime_1d.successes == 1
    assert stats.last_sample_at == clock.now


def test_quantiles_match_numpy(store: InMemoryStatsStore, clock: FakeClock) -> None:
    rng = np.random.default_rng(3)
    ttfts = rng.lognormal(5, 0.7, 5000)
    store.record_many(ok(clock.now - 200 + i * 0.04, ttft=float(t)) for i, t in enumerate(ttfts))
    store.refresh()
    summary = store.stats(KEY).ttft_5m
    assert summary.count == 5000
    for q in RANKING_QUANTILES:
        exact = float(np.quantile(ttfts, q))
        assert summary.get(q) == pytest.approx(exact, rel=0.02)


def test_client_errors_do_not_touch_uptime(store: InMemoryStatsStore, clock: FakeClock) -> None:
    store.record_many([ok(clock.now), fail(clock.now), fail(clock.now, ErrorClass.CLIENT_ERROR)])
    store.refresh()
    up = store.stats(KEY).uptime_1h
    assert (up.attempts, up.successes, up.failures) == (2, 1, 1)
    assert up.ratio == 0.5


def test_failures_without_ttft_leave_digests_alone(
    store: InMemoryStatsStore, clock: FakeClock
) -> None:
    store.record(fail(clock.now, ErrorClass.CONNECT))
    store.refresh()
    stats = store.stats(KEY)
    assert stats.ttft_1h.count == 0 and stats.ttft_1h.get(0.5) is None
    assert stats.uptime_15m.failures == 1


def test_five_minute_window_expires_exactly_on_bucket(
    store: InMemoryStatsStore, clock: FakeClock
) -> None:
    ts = T0 + 5.0  # bucket [T0, T0+30)
    store.record(ok(ts))
    leaves_at = T0 + 10 * FINE.width
    store.refresh(leaves_at - 0.001)
    assert store.stats(KEY).ttft_5m.count == 1
    # No new samples: the rollover alone must make the data leave.
    store.refresh(leaves_at)
    stats = store.stats(KEY)
    assert stats.ttft_5m.count == 0 and stats.ttft_5m.get(0.5) is None
    assert stats.ttft_1h.count == 1
    assert stats.uptime_15m.attempts == 1


def test_uptime_windows_expire_on_time(store: InMemoryStatsStore, clock: FakeClock) -> None:
    store.record(fail(T0 + 1.0))
    store.refresh(T0 + 30 * FINE.width - 0.001)
    assert store.stats(KEY).uptime_15m.failures == 1
    store.refresh(T0 + 30 * FINE.width)
    assert store.stats(KEY).uptime_15m.attempts == 0
    assert store.stats(KEY).uptime_1h.failures == 1
    store.refresh(T0 + 12 * HOUR.width)
    assert store.stats(KEY).uptime_1h.attempts == 0
    assert store.stats(KEY).uptime_1d.failures == 1
    store.refresh(T0 + 86_400.0)
    assert store.stats(KEY).uptime_1d.attempts == 0
    assert store.stats(KEY).ttft_1d.count == 0


def test_old_outcomes_are_ignored_and_future_ones_land_now(
    store: InMemoryStatsStore, clock: FakeClock
) -> None:
    store.record(ok(clock.now - 86_400.0 - 1.0))
    store.refresh()
    assert store.stats(KEY) is EMPTY_STATS
    assert store.ignored_too_old == 1
    store.record(ok(clock.now + 4.0, ttft=7.0))
    store.refresh()
    stats = store.stats(KEY)
    assert stats.ttft_5m.get(0.5) == 7.0
    assert stats.last_sample_at == clock.now
    # Just inside the day window but outside the hour: counted in 1d only.
    store.record(ok(clock.now - 7200.0, ttft=9.0))
    store.refresh()
    stats = store.stats(KEY)
    assert (stats.ttft_1h.count, stats.ttft_1d.count) == (1, 2)


def test_late_sample_in_closed_bucket_is_seen(store: InMemoryStatsStore, clock: FakeClock) -> None:
    clock.now = T0 + 200.0
    store.record(ok(T0 + 10.0, ttft=10.0))
    store.record(ok(clock.now, ttft=20.0))
    store.refresh()
    assert store.stats(KEY).ttft_5m.count == 2
    store.record(ok(T0 + 40.0, ttft=30.0))  # late, into another closed bucket
    store.refresh()
    assert store.stats(KEY).ttft_5m.count == 3
    assert store.stats(KEY).ttft_5m.get(0.99) == pytest.approx(30.0, rel=0.05)


def test_refresh_skips_clean_endpoints(store: InMemoryStatsStore, clock: FakeClock) -> None:
    store.record_many([ok(clock.now), ok(clock.now, key=OTHER)])
    store.refresh()
    before = store.stats(OTHER)
    store.record(ok(clock.now, ttft=999.0))
    clock.now += 1.0  # same buckets
    store.refresh()
    assert store.stats(OTHER) is before
    assert store.stats(KEY).ttft_5m.count == 2


def test_retain_drops_only_removed_endpoints(store: InMemoryStatsStore, clock: FakeClock) -> None:
    store.record_many([ok(clock.now), ok(clock.now, key=OTHER)])
    store.refresh()
    store.retain({KEY})
    assert store.keys() == frozenset({KEY})
    assert store.stats(OTHER) is EMPTY_STATS
    assert store.stats(KEY).ttft_5m.count == 1


def test_timeseries_has_twelve_five_minute_points(
    store: InMemoryStatsStore, clock: FakeClock
) -> None:
    clock.now = T0 + 3599.0
    store.record_many([ok(T0 + 10.0, ttft=100.0), ok(T0 + 20.0, ttft=300.0), fail(T0 + 3500.0)])
    points = store.timeseries(KEY)
    assert len(points) == 12
    assert points[0].start == T0 and points[-1].end == T0 + 3600.0
    assert [p.end - p.start for p in points] == [300.0] * 12
    assert points[0].attempts == 2 and points[0].ttft_p50 == pytest.approx(200.0)
    assert points[-1].failures == 1 and points[-1].ttft_p50 is None
    assert all(p.attempts == 0 for p in points[1:-1])


def test_bucket_digests_export_round_trips(store: InMemoryStatsStore, clock: FakeClock) -> None:
    store.record_many(ok(clock.now, ttft=float(t)) for t in range(1, 101))
    exports = store.bucket_digests(KEY)
    assert {e.ring for e in exports} == {"30s", "5m", "1h"}
    for e in exports:
        digest = TDigest.from_bytes(e.ttft)
        assert digest.count == 100 == e.attempts
        assert digest.quantile(0.5) == pytest.approx(50.5)


def test_memory_is_bounded_under_heavy_traffic() -> None:
    windows = EndpointWindows()
    rng = np.random.default_rng(1)
    now = T0
    for step in range(3 * 24 * 12):  # three days, one burst every 5 minutes
        now = T0 + step * 300.0
        for v in rng.lognormal(5, 1, 200).tolist():
            windows.record(now, now, True, v, v / 10)
        windows.prune(now)
    exports = windows.export(now)
    assert len(exports) <= 30 + 12 + 24
    assert all(len(e.ttft) <= 4096 for e in exports)
    summary = windows.summary(now)
    assert summary.ttft_1d.count == 24 * 12 * 200
    assert summary.uptime_1d.attempts == 24 * 12 * 200


@pytest.mark.parametrize("refresh", ["full", "stepwise"])
def test_refresh_frees_fine_digests_older_than_the_five_minute_window(
    store: InMemoryStatsStore, clock: FakeClock, refresh: str
) -> None:
    """Both refresh paths prune: fine-ring buckets past the 5-minute window keep their
    counters (the 15-minute uptime) but drop their digests."""
    store.record(ok(clock()))
    clock.advance(6 * 60)
    store.record(ok(clock()))
    if refresh == "full":
        store.refresh()
    else:
        for _ in store.refresh_steps():
            pass
    fine = [e for e in store.bucket_digests(KEY) if e.ring == FINE.name]
    assert len(fine) == 2  # both still count towards the 15-minute uptime
    assert [bool(e.ttft) for e in fine] == [False, True]
