"""Ingestion leaves ranking its share of the loop (router_service.ingest.IngestPacing).

The time share is decided by a pure budget over an injected clock, so it is
checked here slice by slice; the benchmark (bench/bench_router.py --scenario
starvation) measures what it buys under real load.
"""

from __future__ import annotations

import random

import pytest

from router_common.catalog import load_catalog
from router_service.callers import CallerLedger, CallerLimitsConfig
from router_service.core import RouterCore
from router_service.ingest import Ingestor, IngestPacing
from tests.conftest import EXAMPLE_CATALOG, FakeClock


def ingestor(clock: FakeClock, share: float = 0.45) -> Ingestor:
    core = RouterCore(load_catalog(str(EXAMPLE_CATALOG)), "v1", clock, random.Random(1))
    ledger = CallerLedger(CallerLimitsConfig(), clock)
    return Ingestor(core, ledger, lambda: None, IngestPacing(share=share), monotonic=clock)


def run_slices(ing: Ingestor, clock: FakeClock, slices: int, spent: float) -> tuple[float, float]:
    """Apply ``slices`` slices of ``spent`` s each, sleeping the pauses; (busy, wall) seconds."""
    busy = wall = 0.0
    for _ in range(slices):
        clock.advance(spent)
        pause = ing._pause_after(spent)
        clock.advance(pause)
        busy, wall = busy + spent, wall + spent + pause
        ing.ranking_served()  # ranking traffic keeps arriving
    return busy, wall


@pytest.mark.parametrize("share", [0.25, 0.45, 0.8])
def test_while_ranking_is_served_ingestion_takes_at_most_its_share(share: float) -> None:
    clock = FakeClock()
    ing = ingestor(clock, share)
    ing.ranking_served()
    busy, wall = run_slices(ing, clock, 2_000, 0.0005)
    # The banked budget (a few ms) is the only excess over the share.
    assert busy / wall <= share + 0.01
    assert busy / wall >= share - 0.01  # and it is not starved either


def test_without_ranking_traffic_ingestion_runs_unpaced() -> None:
    clock = FakeClock()
    ing = ingestor(clock)
    assert ing._pause_after(0.0005) == 0.0  # no ranking call ever
    ing.ranking_served()
    clock.advance(IngestPacing().ranking_quiet_s + 0.01)
    assert [ing._pause_after(0.0005) for _ in range(100)] == [0.0] * 100


def test_late_timers_are_credited_not_lost() -> None:
    clock = FakeClock()
    ing = ingestor(clock, 0.5)
    ing.ranking_served()
    for _ in range(20):  # spend the banked budget
        clock.advance(0.001)
        pause = ing._pause_after(0.001)
    assert pause > 0
    clock.advance(pause + 0.002)  # the timer fired 2 ms late
    ing.ranking_served()
    clock.advance(0.001)
    assert ing._pause_after(0.001) == 0.0  # the overslept time pays for the next slice


@pytest.mark.parametrize(
    ("field", "value"), [("share", 0.0), ("share", 1.5), ("slice_outcomes", 0)]
)
def test_pacing_config_refuses_nonsense(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        IngestPacing(**{field: value})


def test_stepwise_refresh_yields_per_changed_endpoint_and_matches_a_full_refresh() -> None:
    from router_common.domain import EndpointKey, ErrorClass
    from router_service.model import Outcome
    from router_service.sketches.store import InMemoryStatsStore

    clock = FakeClock()
    stepwise, whole = InMemoryStatsStore(clock), InMemoryStatsStore(clock)
    keys = [EndpointKey("m/x", f"p{i}") for i in range(3)]
    outcomes = [
        Outcome(k, clock(), True, ErrorClass.NONE, 200, 100.0 + i, 50.0, 10, 500.0, None)
        for i in range(20)
        for k in keys
    ]
    for store in (stepwise, whole):
        store.record_many(outcomes)
    whole.refresh()
    # Two steps per changed endpoint: adding the outcomes queued for its windows,
    # then merging them into its stats (either alone is a step's worth of work).
    assert sum(1 for _ in stepwise.refresh_steps()) == 6
    assert sum(1 for _ in stepwise.refresh_steps()) == 0  # nothing changed since
    for key in keys:
        assert stepwise.stats(key).ttft_1h.get(0.5) == whole.stats(key).ttft_1h.get(0.5) > 0
    stepwise.record_many(outcomes[:1])
    stepwise.refresh()  # refresh() adds the queued outcomes too: nothing left to step
    assert sum(1 for _ in stepwise.refresh_steps()) == 0


def test_refresh_time_charged_to_ingestion_is_paid_by_the_next_slices() -> None:
    """The quantile refresh runs because outcomes arrived: its loop time comes out of
    ingestion's share, so the share bounds both (a slice right after it sleeps it off)."""
    clock = FakeClock()
    ing = ingestor(clock, 0.5)
    ing.ranking_served()
    uncharged = ing._pause_after(0.0005)
    clock.advance(uncharged)
    ing.charge(0.004)
    charged = ing._pause_after(0.0005)
    assert uncharged < 0.002
    assert charged >= 0.004 / 0.5 - 0.002  # the refresh's 4 ms at a 0.5 share, less the bank
    assert ing.refresh_s == pytest.approx(0.004)


def test_refresh_time_under_ranking_traffic_keeps_the_share() -> None:
    clock = FakeClock()
    ing = ingestor(clock, 0.45)
    ing.ranking_served()
    busy = wall = 0.0
    for i in range(2_000):
        spent = 0.0005
        if i % 20 == 0:  # a refresh step between slices
            ing.charge(0.001)
            clock.advance(0.001)
            busy, wall = busy + 0.001, wall + 0.001
        clock.advance(spent)
        pause = ing._pause_after(spent)
        clock.advance(pause)
        busy, wall = busy + spent, wall + spent + pause
        ing.ranking_served()
    assert busy / wall <= 0.45 + 0.01


def test_background_refresh_merges_each_window_at_its_own_cadence() -> None:
    """Every background pass takes the recent view (what ranking follows change
    with); the 5-minute window and uptimes are re-merged once ``short_refresh_s``
    has passed, the hour's and day's once ``long_refresh_s`` has (and everything
    by ``refresh``)."""
    from router_common.domain import EndpointKey, ErrorClass
    from router_service.model import Outcome
    from router_service.sketches.store import InMemoryStatsStore

    clock = FakeClock()
    store = InMemoryStatsStore(clock, long_refresh_s=1.0, short_refresh_s=0.5)
    key = EndpointKey("m/x", "p0")

    def record(n: int, ttft: float) -> None:
        store.record_many(
            [Outcome(key, clock(), True, ErrorClass.NONE, 200, ttft, 50.0, 10, 500.0, None)] * n
        )

    def drain() -> None:
        for _ in store.refresh_steps():
            pass

    record(10, 100.0)
    drain()
    assert store.stats(key).ttft_1h.count == store.stats(key).ttft_5m.count == 10
    clock.advance(0.2)
    record(5, 300.0)
    drain()
    stats = store.stats(key)
    assert stats.recent.samples == 15 and stats.last_sample_at == clock()
    assert stats.ttft_5m.count == 10 and stats.uptime_1h.attempts == 10  # wait for 0.5 s
    clock.advance(0.3)
    drain()  # no new data: the endpoint stayed due for its merge
    stats = store.stats(key)
    assert stats.ttft_5m.count == 15 and stats.uptime_1h.attempts == 15
    assert stats.ttft_1h.count == 10  # the hour waits for its next merge
    clock.advance(0.5)
    record(1, 300.0)
    drain()
    assert store.stats(key).ttft_1h.count == store.stats(key).ttft_1d.count == 16
    record(1, 300.0)
    store.refresh()  # an explicit refresh is always complete
    assert store.stats(key).ttft_1h.count == store.stats(key).ttft_5m.count == 17


async def test_ingestion_time_is_exported_to_prometheus(router_app, router_stub) -> None:
    import time

    import aiohttp

    from router_common.pb import router_pb2

    outcome = router_pb2.Outcome(
        model="zai/glm-4.7",
        provider="cerebras",
        started_at=time.time(),
        success=True,
        http_status=200,
        ttft_ms=200.0,
        duration_ms=900.0,
    )
    await router_stub.RankProviders(router_pb2.RankProvidersRequest(model="zai/glm-4.7"))
    await router_stub.RecordOutcome(router_pb2.RecordOutcomeRequest(outcomes=[outcome] * 200))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{router_app.http_url}/metrics") as response,
    ):
        text = await response.text()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("router_ingest_")
    }
    assert values["router_ingest_busy_seconds_total"] > 0
    assert "router_ingest_paced_seconds_total" in values
    assert "router_ingest_refresh_seconds_total" in values
