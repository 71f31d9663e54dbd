"""The ingestion path's grouped recorder gives exactly what ``RouterCore.record`` gives.

``GroupedRecorder`` (router_service/ingest.py) validates a batch in one pass
with the common case inline (``BatchValidator``), groups it by endpoint once,
lets the stats store queue each endpoint's group for its windows, tallies the
dashboard series per endpoint and feeds health with a success on a healthy
endpoint inlined. These tests feed the same random batches (valid outcomes of
every kind, and invalid ones mid-batch) to two identical routers, one through
``RouterCore.record`` and one through the grouped path, and compare everything
a reader can see: the per-batch results and rejection messages, the counters,
the cached stats, every bucket's serialised digests, the dashboard series,
health (state, evidence, transitions).
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from router_common.catalog import load_catalog
from router_common.domain import EndpointKey, ErrorClass
from router_common.pb import router_pb2
from router_service.core import RouterCore
from router_service.dashboard_series import _QUEUED_MAX, RANGES, DashboardSeries
from router_service.health import HealthConfig, HealthTracker
from router_service.ingest import GroupedRecorder
from router_service.model import HealthState, Outcome
from router_service.sketches.store import _PENDING_GROUPS, _PENDING_VALUES, InMemoryStatsStore
from router_service.sketches.windows import EndpointWindows
from tests.conftest import EXAMPLE_CATALOG, FakeClock

MODEL = "zai/glm-4.7"
PROVIDERS = ["cerebras", "together", "fireworks", "deepinfra", "baseten"]
#: 5 s before a 30 s / 60 s / 5 min edge, so batches straddle bucket edges.
T0 = 1_800_000_000.0 - (1_800_000_000.0 % 3600) + 1795.0
FAILURES = [
    (router_pb2.ERROR_CLASS_SERVER_ERROR, 503),
    (router_pb2.ERROR_CLASS_TIMEOUT, 0),
    (router_pb2.ERROR_CLASS_CONNECT, 0),
    (router_pb2.ERROR_CLASS_RATE_LIMITED, 429),
]


def _valid(rng: random.Random, now: float, provider: str, slow: float) -> router_pb2.Outcome:
    msg = router_pb2.Outcome(model=MODEL, provider=provider)
    when = rng.random()
    if when < 0.5:
        pass  # started_at unset: the router's clock
    elif when < 0.8:
        msg.started_at = now - rng.uniform(0, 40)  # across a bucket edge
    elif when < 0.9:
        msg.started_at = now - rng.uniform(0, 7000)  # late: closed buckets
    else:
        msg.started_at = now + rng.uniform(0, 5)  # a sidecar clock slightly ahead
    roll = rng.random()
    if roll < 0.93:
        msg.success = True
        if rng.random() < 0.5:
            msg.error_class = router_pb2.ERROR_CLASS_NONE
        if rng.random() < 0.7:
            msg.http_status = 200
        if rng.random() < 0.9:
            msg.ttft_ms = rng.lognormvariate(5.5, 0.4) * slow
        elif rng.random() < 0.3:
            msg.ttft_ms = 0.0
        if rng.random() < 0.9:
            msg.tokens_per_second = rng.lognormvariate(4.5, 0.3)
        elif rng.random() < 0.3:
            msg.tokens_per_second = 0.0
        msg.output_tokens = rng.randrange(0, 2000)
        msg.duration_ms = rng.uniform(0, 20_000)
    elif roll < 0.98:
        error_class, status = rng.choice(FAILURES)
        msg.success = False
        msg.error_class = error_class
        msg.http_status = status
        if status == 429 and rng.random() < 0.1:
            msg.retry_after_seconds = rng.uniform(0.5, 20)
        msg.duration_ms = rng.uniform(0, 30_000)
    else:
        msg.success = False
        msg.error_class = router_pb2.ERROR_CLASS_CLIENT_ERROR
        msg.http_status = 400
        if rng.random() < 0.5:
            msg.ttft_ms = rng.lognormvariate(5.0, 0.3)
    return msg


def _invalid(rng: random.Random, now: float) -> router_pb2.Outcome:
    """One outcome each validation rule refuses (and one made valid by chance: none)."""
    msg = router_pb2.Outcome(
        model=MODEL, provider=rng.choice(PROVIDERS), success=True, ttft_ms=300.0
    )
    kind = rng.randrange(18)
    if kind == 0:
        msg.model = "no/such-model"
    elif kind == 1:
        msg.provider = "nobody"
    elif kind == 2:
        msg.model = "m" * 300
    elif kind == 3:
        msg.provider = "p" * 300
    elif kind == 4:
        msg.started_at = now - 10 * 86_400
    elif kind == 5:
        msg.started_at = now + 3_600
    elif kind == 6:
        msg.success = False  # no error class
    elif kind == 7:
        msg.error_class = router_pb2.ERROR_CLASS_TIMEOUT  # contradicts success
    elif kind == 8:
        msg.http_status = 503  # contradicts success
    elif kind == 9:
        msg.http_status = 42
    elif kind == 10:
        msg.ttft_ms = math.nan
    elif kind == 11:
        msg.duration_ms = -1.0
    elif kind == 12:
        msg.duration_ms = 1e12
    elif kind == 13:
        msg.output_tokens = 10**9
    elif kind == 14:
        msg.tokens_per_second = 1e9
    elif kind == 15:
        msg.ttft_ms = 1e12
    elif kind == 16:
        msg.success = False
        msg.error_class = router_pb2.ERROR_CLASS_RATE_LIMITED
        msg.retry_after_seconds = 1e9
    else:
        msg.error_class = 99  # type: ignore[assignment]  # a value this router does not know
    return msg


def _batch(rng: random.Random, now: float, size: int, slow: dict[str, float]):
    out = []
    for _ in range(size):
        if rng.random() < 0.08:
            out.append(_invalid(rng, now))
        else:
            provider = rng.choice(PROVIDERS)
            out.append(_valid(rng, now, provider, slow.get(provider, 1.0)))
    return out


def _pair(seed: int) -> tuple[FakeClock, RouterCore, RouterCore]:
    """(clock, reference, core): the reference applies everything outcome by outcome:
    health through ``HealthTracker.record`` per outcome, and its store's queued
    groups are added to the windows at once after every call."""
    clock = FakeClock(T0)
    catalog = load_catalog(EXAMPLE_CATALOG)
    made = [
        RouterCore(
            catalog,
            "v1",
            clock,
            random.Random(seed),
            # Odd seeds: a failure-rate window short enough to overflow.
            health_config=HealthConfig(failure_rate_max_samples=15 if seed % 2 else 1000),
            health_rng=random.Random(seed + 100),
        )
        for _ in range(2)
    ]
    reference = made[0]
    health, store = reference.health, reference.store
    assert isinstance(store, InMemoryStatsStore)

    def one_by_one(outcomes, baselines) -> None:
        for outcome in outcomes:
            health.record(outcome, baselines.get(outcome.endpoint))

    def eager(outcomes) -> None:
        InMemoryStatsStore.record_many(store, outcomes)
        for entry in store._entries.values():
            store._flush(entry)
            assert not entry.pending

    health.record_many = one_by_one  # type: ignore[method-assign]
    store.record_many = eager  # type: ignore[method-assign]
    return clock, reference, made[1]


def _state(core: RouterCore, clock: FakeClock) -> dict:
    """Everything a reader of the core can see, for comparison."""
    core.refresh()
    keys = sorted(core.known_endpoints)
    store = core.store
    assert isinstance(store, InMemoryStatsStore)
    return {
        "stats": {k: store.stats(k) for k in keys},
        "digests": {k: store.bucket_digests(k) for k in keys},
        "timeseries": {k: store.timeseries(k) for k in keys},
        "last_sample_at": {k: store.last_sample_at(k) for k in keys},
        "ignored_too_old": store.ignored_too_old,
        "series": {
            (k, r): core.series.points(k, r, core.health_view(k).state, 1)
            for k in keys
            for r in RANGES
        },
        "health": core.health.export_state(),
        "transitions": core.health.transitions(),
        "views": {k: core.health_view(k) for k in keys},
        "by_class": list(core.outcomes_by_class.items()),
        "rejected": core.outcomes_rejected,
        "rejected_by_field": dict(core.outcomes_rejected_by_field),
    }


def _health(core: RouterCore) -> tuple:
    """Health's whole state, including what only peers read (each endpoint's slowdown)."""
    slowdowns = {k: st.ttft_slowdown for k, st in core.health._states.items()}
    return core.health.export_state(), slowdowns, core.health.transitions()


def _result(r) -> tuple:
    return (r.accepted, r.rejected, [(i, str(j)) for i, j in r.rejections])


@pytest.mark.parametrize("seed", range(8))
def test_grouped_recorder_equals_record(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random batches in slices, some endpoints slowed down and failing for a while
    (so health degrades, ejects and probes), time moving across bucket edges."""
    rng = random.Random(seed)
    clock, plain, grouped = _pair(seed)
    recorder = GroupedRecorder(grouped)
    # Count the outcomes health takes the general way, to check that the
    # inlined path (a success on a healthy endpoint) was compared too.
    general = {"grouped": 0}
    record_one = HealthTracker._record

    def counted(self: HealthTracker, *args: Any) -> None:
        if self is grouped.health:
            general["grouped"] += 1
        record_one(self, *args)

    monkeypatch.setattr(HealthTracker, "_record", counted)
    slow: dict[str, float] = {}
    transitions_seen = 0
    for step in range(60):
        if step == 20:
            slow = {"cerebras": 3.0}
        if step == 40:
            slow = {}
        messages = _batch(rng, clock(), rng.choice([1, 7, 64, 200]), slow)
        if 25 <= step < 30:  # an outage: every outcome of one endpoint fails
            for msg in messages:
                if msg.provider == "together" and msg.model == MODEL:
                    msg.success = False
                    msg.error_class = router_pb2.ERROR_CLASS_SERVER_ERROR
                    msg.http_status = 503
                    msg.ClearField("ttft_ms")
                    msg.ClearField("tokens_per_second")
        first = rng.randrange(0, 1000)
        assert _result(plain.record(messages, first)) == _result(recorder.record(messages, first))
        if step % 3 == 0:
            plain.refresh()
            grouped.refresh()
        if step % 10 == 0:  # a probe granted by ranking
            for key in plain.known_endpoints:
                plain.health.grant_probe(key)
                grouped.health.grant_probe(key)
        clock.advance(rng.choice([0.0, 0.5, 3.0, 12.0, 45.0]))
        transitions_seen = len(plain.health.transitions())
        assert _health(plain) == _health(grouped), step
        if step % 5 == 4:
            assert _state(plain, clock) == _state(grouped, clock), step
    # The comparison covered the interesting paths and the inlined one.
    accepted = sum(plain.outcomes_by_class.values())
    assert general["grouped"] < accepted / 2
    assert plain.outcomes_rejected > 0
    assert sum(plain.outcomes_rejected_by_field.values()) == plain.outcomes_rejected
    assert transitions_seen > 0
    states = {t.to_state for t in plain.health.transitions()}
    assert {HealthState.EJECTED, HealthState.DEGRADED} <= states


def test_grouped_recorder_rejections_name_the_field_and_keep_the_index() -> None:
    _, plain, grouped = _pair(1)
    messages = [
        router_pb2.Outcome(model=MODEL, provider="cerebras", success=True, ttft_ms=200.0),
        router_pb2.Outcome(model=MODEL, provider="cerebras", success=True, ttft_ms=math.inf),
        router_pb2.Outcome(model=MODEL, provider="nobody", success=True),
        router_pb2.Outcome(model=MODEL, provider="cerebras", success=True, http_status=503),
    ]
    result = GroupedRecorder(grouped).record(messages, 10)
    assert _result(result) == _result(plain.record(messages, 10))
    assert result.accepted == 1
    assert [(i, j.field) for i, j in result.rejections] == [
        (11, "ttft_ms"),
        (12, "provider"),
        (13, "http_status"),
    ]
    assert "Infinity" in str(result.rejections[0][1])


def test_grouped_recorder_follows_a_catalog_reload() -> None:
    """The validator's endpoint table is rebuilt when the catalog changes."""
    _, _, core = _pair(1)
    recorder = GroupedRecorder(core)
    msg = router_pb2.Outcome(model=MODEL, provider="cerebras", success=True, ttft_ms=200.0)
    assert recorder.record([msg]).accepted == 1
    catalog = load_catalog(EXAMPLE_CATALOG)
    model = catalog.models[MODEL]
    smaller = type(catalog)(
        providers=catalog.providers,
        models={
            **catalog.models,
            MODEL: type(model)(
                id=model.id,
                endpoints=tuple(e for e in model.endpoints if e.provider.name != "cerebras"),
            ),
        },
    )
    core.replace_catalog(smaller, "v2")
    result = recorder.record([msg])
    assert result.accepted == 0
    assert result.rejections[0][1].field == "provider"


def _outcome(rng: random.Random, key: EndpointKey, now: float) -> Outcome:
    ts = now - rng.choice([0.0, rng.uniform(0, 45), rng.uniform(0, 7200), -2.0, 90_000.0])
    if rng.random() < 0.8:
        return Outcome(
            key, ts, True, ttft_ms=rng.uniform(50, 900), tokens_per_second=rng.uniform(20, 200)
        )
    return Outcome(key, ts, False, http_status=503)


def test_store_queue_gives_the_windows_of_one_record_per_outcome() -> None:
    """The store queues groups and merges a group into the last one only; the
    windows it ends with are those of ``EndpointWindows.record`` per outcome at
    the time it was recorded, bucket for bucket and digest byte for byte."""
    rng = random.Random(3)
    clock = FakeClock(T0)
    store = InMemoryStatsStore(clock)
    key = EndpointKey(MODEL, "cerebras")
    reference = EndpointWindows()
    for _ in range(600):
        batch = [_outcome(rng, key, clock()) for _ in range(rng.randrange(1, 12))]
        if rng.random() < 0.7:  # the common case: all in the current buckets
            batch = [o._replace(timestamp=clock()) for o in batch]
        store.record_many(batch)
        now = clock()
        for o in batch:
            reference.record(min(o.timestamp, now), now, o.success, o.ttft_ms, o.tokens_per_second)
        clock.advance(rng.choice([0.0, 0.2, 4.0]))
    assert store.bucket_digests(key) == reference.export(clock())


def test_store_queue_is_bounded_without_refresh() -> None:
    clock = FakeClock(T0)
    store = InMemoryStatsStore(clock)
    key = EndpointKey(MODEL, "cerebras")
    for i in range(3000):
        store.record_many([Outcome(key, clock() - (i % 100) * 40.0, True, ttft_ms=100.0)] * 3)
        clock.advance(0.01)
        pending = store._entries[key].pending
        assert len(pending) < _PENDING_GROUPS
        assert sum(len(g.ttfts) for g in pending) < _PENDING_VALUES


def test_series_grouped_equals_record_many() -> None:
    """Outcomes as any caller may pass them (not only validated ones: a success
    with a failure's class, zero and missing values, timestamps out of range)."""
    rng = random.Random(5)
    clock = FakeClock(T0)
    keys = [EndpointKey(MODEL, p) for p in PROVIDERS]
    reference, grouped = DashboardSeries(clock), DashboardSeries(clock)
    classes = list(ErrorClass)
    for _ in range(200):
        batch = []
        for _ in range(rng.randrange(1, 40)):
            ts = clock() - rng.choice([0.0, 0.0, rng.uniform(0, 30), rng.uniform(0, 4000)])
            if rng.random() < 0.05:
                ts = rng.choice([0.0, -5.0, clock() + 30])
            batch.append(
                Outcome(
                    rng.choice(keys),
                    ts,
                    rng.random() < 0.85,
                    rng.choice(classes) if rng.random() < 0.2 else ErrorClass.NONE,
                    ttft_ms=rng.choice([None, 0.0, rng.uniform(1, 5000)]),
                    tokens_per_second=rng.choice([None, 0.0, rng.uniform(1, 500)]),
                )
            )
        reference.record_many(batch)
        by_endpoint: dict[EndpointKey, list[Outcome]] = {}
        for o in batch:
            by_endpoint.setdefault(o.endpoint, []).append(o)
        grouped.record_grouped(by_endpoint)
        clock.advance(rng.choice([0.0, 1.0, 7.0]))
    for key in keys:
        for name in RANGES:
            assert reference.points(key, name, HealthState.HEALTHY, 1) == grouped.points(
                key, name, HealthState.HEALTHY, 1
            )
        rings_a, rings_b = reference._endpoints[key].rings, grouped._endpoints[key].rings
        for name in rings_a:
            # The grouped path queues its bins in a bucket until it is read: count
            # them in (as every read does) before comparing the histograms.
            for b in rings_b[name].slots:
                if b is not None:
                    b.settle()
            assert rings_a[name].slots == rings_b[name].slots


def test_series_queued_bins_stay_bounded_and_are_counted_when_read() -> None:
    """The grouped path queues each bucket's histogram bins instead of counting
    them per slice; however long nothing reads the series, only one bucket per
    ring holds queued bins, fewer than ``_QUEUED_MAX`` per metric (a bucket left
    behind by the clock has them counted), and a read sees every value recorded."""
    clock = FakeClock(T0)
    key = EndpointKey(MODEL, PROVIDERS[0])
    series = DashboardSeries(clock)
    recorded = 0
    for i in range(3 * _QUEUED_MAX // 16 + 5):  # several queues' worth, 16 a slice
        group = [
            Outcome(key, clock(), True, ttft_ms=100.0 + (i + j) % 50, tokens_per_second=80.0)
            for j in range(16)
        ]
        series.record_grouped({key: group})
        recorded += len(group)
        clock.advance(0.25)  # across several 10 s buckets
        for ring in series._endpoints[key].rings.values():
            holding = [b for b in ring.slots if b is not None and (b.ttft_queued or b.tps_queued)]
            assert len(holding) <= 1
            assert all(len(b.ttft_queued) < _QUEUED_MAX for b in holding)
            assert all(len(b.tps_queued) < _QUEUED_MAX for b in holding)
    points = series.points(key, "15m", HealthState.HEALTHY, 1)
    assert sum(p["successes"] for p in points) == recorded
    for ring in series._endpoints[key].rings.values():
        buckets = [b.settle() for b in ring.slots if b is not None]
        assert sum(b.ttft_n for b in buckets) == recorded
        assert sum(sum(b.ttft.values()) for b in buckets) == recorded
        assert sum(sum(b.tps.values()) for b in buckets) == recorded


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_store_refuses_a_non_finite_value_when_recorded_not_when_refreshed(bad: float) -> None:
    """The queue is added to the windows later; a value a digest cannot take must
    still be refused by ``record_many`` itself, before it is queued, or every
    later refresh would fail on it."""
    clock = FakeClock(T0)
    store = InMemoryStatsStore(clock)
    key = EndpointKey(MODEL, "cerebras")
    store.record_many([Outcome(key, clock(), True, ttft_ms=200.0)])
    with pytest.raises(ValueError, match="must be finite"):
        store.record_many([Outcome(key, clock(), True, tokens_per_second=bad)])
    store.refresh()
    assert store.stats(key).ttft_5m.count == 1
    assert store.stats(key).tps_5m.count == 0


def test_store_ignores_a_non_finite_value_older_than_every_window() -> None:
    """As before the queue: an outcome dropped for its age never reaches a digest,
    so its values are not checked (and the rest of its batch is recorded)."""
    clock = FakeClock(T0)
    store = InMemoryStatsStore(clock)
    key = EndpointKey(MODEL, "cerebras")
    store.record_many(
        [
            Outcome(key, clock() - 3 * 86_400, True, ttft_ms=math.nan),
            Outcome(key, clock(), True, ttft_ms=200.0),
        ]
    )
    store.refresh()
    assert store.stats(key).ttft_5m.count == 1
    assert store.ignored_too_old == 1
