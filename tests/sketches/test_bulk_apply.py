"""A batch applied in bulk equals the same outcomes applied one by one.

The ingestion path groups a batch by endpoint and bucket (the stats store),
adds each bucket's values in one call (the t-digest) and feeds health under
one lock and clock reading. These tests feed the same outcomes both ways
and compare everything a reader can see: quantiles, counters, the recent
view, health states and the transition log.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_common.domain import EndpointKey, ErrorClass
from router_service.health import HealthConfig, HealthTracker
from router_service.model import Outcome
from router_service.sketches.store import InMemoryStatsStore
from router_service.sketches.tdigest import TDigest
from tests.conftest import FakeClock

MODEL = "zai/glm-4.7"
KEYS = [EndpointKey(MODEL, p) for p in ("cerebras", "groq", "fireworks")]
T0 = 1_700_000_000.0 - (1_700_000_000.0 % 3600) + 1795.0  # 5 s before a 30 s/5 min edge


def mixed_outcomes(rng: random.Random, count: int, now: float) -> list[Outcome]:
    """Successes, failures, client errors, missing values, late and future timestamps."""
    out = []
    for _ in range(count):
        key = rng.choice(KEYS)
        # Spread over 2 h back, across bucket edges, some slightly in the future
        # and some older than every window.
        ts = now - rng.choice([0.0, rng.uniform(0, 40), rng.uniform(0, 7200), -3.0, 90_000.0])
        roll = rng.random()
        if roll < 0.7:
            out.append(
                Outcome(
                    endpoint=key,
                    timestamp=ts,
                    success=True,
                    ttft_ms=rng.lognormvariate(5.5, 0.5) if rng.random() < 0.9 else None,
                    tokens_per_second=rng.lognormvariate(4.5, 0.3) if rng.random() < 0.9 else None,
                )
            )
        elif roll < 0.9:
            out.append(
                Outcome(
                    endpoint=key,
                    timestamp=ts,
                    success=False,
                    error_class=ErrorClass.SERVER_ERROR,
                    http_status=503,
                )
            )
        else:
            out.append(
                Outcome(
                    endpoint=key,
                    timestamp=ts,
                    success=False,
                    error_class=ErrorClass.CLIENT_ERROR,
                    http_status=400,
                    ttft_ms=rng.lognormvariate(5.0, 0.3),
                )
            )
    return out


def test_store_bulk_batch_equals_one_by_one() -> None:
    clock = FakeClock(T0)
    bulk, single = InMemoryStatsStore(clock), InMemoryStatsStore(clock)
    rng = random.Random(7)
    for _ in range(12):  # batches across a bucket edge (time moves 1 s per batch)
        batch = mixed_outcomes(rng, 400, clock())
        bulk.record_many(batch)
        for outcome in batch:
            single.record(outcome)
        clock.advance(1.0)
    bulk.refresh()
    single.refresh()
    assert bulk.ignored_too_old == single.ignored_too_old > 0
    for key in KEYS:
        a, b = bulk.stats(key), single.stats(key)
        # Each bucket digest got the same values in the same order: equal, not close.
        assert a == b
        assert a.ttft_5m.count > 0 and a.uptime_1d.failures > 0
        assert bulk.timeseries(key) == single.timeseries(key)
        assert bulk.bucket_digests(key) == single.bucket_digests(key)


def test_add_many_equals_add_across_buffer_flushes() -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(5.0, 1.0) for _ in range(5_000)]
    one, many = TDigest(), TDigest()
    for v in values:
        one.add(v)
    start = 0
    for size in (1, 7, 300, 511, 2, 1_500, 2_679):  # chunks straddling the 800-value buffer
        many.add_many(values[start : start + size])
        start += size
    assert start == len(values)
    assert many.to_bytes() == one.to_bytes()
    with pytest.raises(ValueError, match="finite"):
        many.add_many([1.0, float("nan")])


def test_health_bulk_batch_equals_one_by_one() -> None:
    config = HealthConfig()
    clock = FakeClock(T0)
    bulk = HealthTracker(config, clock, random.Random(1))
    single = HealthTracker(config, clock, random.Random(1))
    rng = random.Random(11)
    for step in range(200):
        # Stretches of slow TTFTs and failure bursts, so endpoints degrade, get
        # ejected, probe and recover along the way.
        slow = 4.0 if (step // 25) % 2 else 1.0
        failing = (step // 40) % 3 == 2
        batch = []
        for _ in range(20):
            key = rng.choice(KEYS)
            if failing and key == KEYS[0] and rng.random() < 0.8:
                batch.append(Outcome(key, clock(), False, ErrorClass.SERVER_ERROR, http_status=500))
            else:
                factor = slow if key == KEYS[1] else 1.0
                batch.append(Outcome(key, clock(), True, ttft_ms=200.0 * factor))
        baselines = {k: 200.0 for k in KEYS}
        bulk.record_many(batch, baselines)
        for outcome in batch:
            single.record(outcome, baselines[outcome.endpoint])
        for key in KEYS:
            assert bulk.view(key) == single.view(key)
        clock.advance(1.5)
    assert bulk.transitions() == single.transitions()
    states = {t.to_state.name for t in bulk.transitions()}
    assert {"DEGRADED", "EJECTED"} <= states


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.0, 0.0, 0.4, 2.0]),  # most attempts share an instant
            st.sampled_from([None, True, False]),
            st.one_of(
                st.none(),
                st.just(math.nan),
                st.floats(min_value=-5, max_value=5_000),
            ),
            st.one_of(st.none(), st.none(), st.floats(min_value=0, max_value=5_000)),
        ),
        max_size=40,
    )
)
def test_recent_record_many_is_record_one_by_one(attempts) -> None:
    """The burst shortcut (constant weights once the estimates stand at ``now``) gives
    bit-for-bit the estimate of one ``record`` per attempt, timeouts' waits included."""
    from router_service.sketches.recent import RecentTracker

    bulk, single = RecentTracker(), RecentTracker()
    now = 1_000.0
    batch: list = []
    for step, failed, ttft, waited in attempts:
        if step:
            bulk.record_many(now, batch)
            batch = []
            now += step
        batch.append((failed, ttft, waited))
        single.record(now, failed, ttft, waited)
    bulk.record_many(now, batch)
    assert bulk.estimate() == single.estimate()
