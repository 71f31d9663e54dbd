"""The sketch worker: the stats store and the dashboard series in their own process.

What must hold: a router with the worker answers exactly what a router without
it answers (same stats, same dashboard history, health transitions included);
what crosses the socket rebuilds the same outcomes; a worker that dies leaves a
router that goes on serving (in process, from empty); stopping the router
stops its worker; the CLI turns it on by default and off by flag or variable.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path

import aiohttp
import grpc
import pytest

from router_common.domain import EndpointKey, ErrorClass
from router_common.pb import router_pb2, router_pb2_grpc
from router_service.cli import parse_args
from router_service.model import Outcome
from router_service.sketch_worker.frames import (
    MAX_FRAME,
    FrameBuffer,
    FrameError,
    columns_of,
    frame,
    outcomes_of,
)
from router_service.sketch_worker.proxy import WRITE_HIGH_WATER
from router_service.sketch_worker.worker import SketchHost
from router_service.sketches.store import InMemoryStatsStore, group_by_endpoint
from tests.conftest import FakeClock, loopback_router, wait_for
from tests.router.pb_builders import MODEL, failure, outcome

GLM_PATH = "/v1/models/zai/glm-4.7"
PROVIDERS = ["baseten", "cerebras", "deepinfra", "fireworks", "together"]


def _random_outcomes(rng: random.Random, now: float, n: int) -> list[Outcome]:
    classes = list(ErrorClass)
    out = []
    for _ in range(n):
        error_class = rng.choice(classes) if rng.random() < 0.3 else ErrorClass.NONE
        success = error_class is ErrorClass.NONE
        out.append(
            Outcome(
                EndpointKey(MODEL, rng.choice(PROVIDERS[:3])),
                now - rng.uniform(0, 900),
                success,
                error_class,
                200 if success else 503,
                rng.lognormvariate(5, 0.5) if success or rng.random() < 0.3 else None,
                rng.lognormvariate(4, 0.3) if success and rng.random() < 0.9 else None,
                10,
                rng.uniform(10, 2000),
            )
        )
    return out


def test_columns_rebuild_the_fields_the_sketches_read() -> None:
    rng = random.Random(3)
    sent = _random_outcomes(rng, 1_800_000_000.0, 300)
    by_endpoint = group_by_endpoint(sent)
    rebuilt = outcomes_of(columns_of(by_endpoint))
    assert list(rebuilt) == list(by_endpoint)
    for key, same in by_endpoint.items():
        for a, b in zip(same, rebuilt[key], strict=True):
            assert (a.endpoint, a.timestamp, a.success, a.error_class) == (
                b.endpoint,
                b.timestamp,
                b.success,
                b.error_class,
            )
            assert (a.ttft_ms, a.tokens_per_second, a.duration_ms) == (
                b.ttft_ms,
                b.tokens_per_second,
                b.duration_ms,
            )


def test_the_worker_state_matches_the_in_process_store() -> None:
    """Batches through columns and ``SketchHost`` give the in-process store's stats."""
    clock = FakeClock()
    rng = random.Random(11)
    host = SketchHost(clock)
    local = InMemoryStatsStore(clock=clock)
    for _ in range(20):
        by_endpoint = group_by_endpoint(_random_outcomes(rng, clock(), rng.randrange(1, 200)))
        assert host.handle(("record", columns_of(by_endpoint))) is None
        local.record_grouped(by_endpoint)
        clock.advance(rng.uniform(0, 20))
    assert host.handle(("refresh", 7)) == ("reply", 7, None)
    local.refresh()
    update = host.changed()
    assert update is not None and update[0] == "stats"
    assert update[1] == local.snapshot(local.keys())
    assert host.changed() is None  # nothing changed since: nothing to send


async def test_a_checkpoint_crosses_to_the_worker_and_back() -> None:
    """Replication's paths: a checkpoint absorbed by the worker, exported again,
    says what the in-process store says (same buckets, same newest sample)."""
    clock = FakeClock()
    rng = random.Random(17)
    source = InMemoryStatsStore(clock=clock)
    source.record_many(_random_outcomes(rng, clock(), 500))
    checkpoint = await source.export(clock())
    host = SketchHost(clock)
    local = InMemoryStatsStore(clock=clock)
    for key, last_sample_at, buckets in checkpoint:
        assert host.handle(("absorb", key, buckets, last_sample_at, clock())) is None
        local.absorb(key, buckets, last_sample_at, clock())
    more = group_by_endpoint(_random_outcomes(rng, clock(), 200))
    host.handle(("record", columns_of(more)))
    local.record_grouped(more)
    reply = host.handle(("export", 4, clock()))
    assert reply is not None and reply[:2] == ("reply", 4)
    assert reply[2] == await local.export(clock())
    assert [key for key, _, _ in reply[2]] == sorted(local.keys())


def test_frames_survive_any_split_and_refuse_a_runaway_length() -> None:
    messages = [("record", [1.5, None, "x" * 1000]), ("reply", 3, {"a": [1, 2]}), ("refresh", 9)]
    data = b"".join(part for m in messages for part in frame(m))
    rng = random.Random(5)
    for _ in range(20):
        buffer, got, at = FrameBuffer(), [], 0
        while at < len(data):
            step = rng.randrange(1, 400)
            got += buffer.feed(data[at : at + step])
            at += step
        assert got == messages
    with pytest.raises(FrameError, match="at most"):
        FrameBuffer().feed((MAX_FRAME + 1).to_bytes(4, "big"))


def test_the_cli_runs_the_worker_unless_told_not_to(monkeypatch) -> None:
    assert parse_args(["--config", "c.yaml"]).sketch_worker is True
    assert parse_args(["--config", "c.yaml", "--no-sketch-worker"]).sketch_worker is False
    monkeypatch.setenv("ROUTER_SKETCH_WORKER", "off")
    assert parse_args(["--config", "c.yaml"]).sketch_worker is False


def test_a_bad_variable_names_itself(monkeypatch, capsys) -> None:
    monkeypatch.setenv("ROUTER_SKETCH_WORKER", "sometimes")
    with pytest.raises(SystemExit) as info:
        parse_args(["--config", "c.yaml"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "ROUTER_SKETCH_WORKER" in err and '"sometimes"' in err


def _batch(started_at: float) -> router_pb2.RecordOutcomeRequest:
    rng = random.Random(8)
    items = []
    for i in range(400):
        provider = PROVIDERS[i % 3]
        if provider == "baseten" and i % 9 == 0:
            items.append(failure(provider, started_at=started_at - rng.uniform(0, 5)))
        else:
            items.append(
                outcome(
                    provider,
                    started_at=started_at - rng.uniform(0, 5),
                    ttft_ms=rng.lognormvariate(5.5, 0.4),
                    tokens_per_second=rng.lognormvariate(4.5, 0.3),
                )
            )
    # deepinfra fails until it is ejected: a health transition the series must show.
    items += [failure("deepinfra", started_at=started_at) for _ in range(30)]
    return router_pb2.RecordOutcomeRequest(outcomes=items)


def _figures(endpoints_doc: dict, timeseries_doc: dict) -> dict:
    """What the documents say about the data (not when they were generated)."""
    rows = {
        row["provider_name"]: {
            k: row[k]
            for k in (
                "latency_last_1h",
                "throughput_last_1h",
                "sample_size_last_1h",
                "latency_last_5m",
                "sample_size_last_5m",
                "uptime_last_1h",
                "attempts",
                "status",
            )
        }
        for row in endpoints_doc["data"]["endpoints"]
    }
    series = {}
    for s in timeseries_doc["data"]["series"]:
        points = [p for p in s["points"] if p["attempts"]]
        series[s["provider_name"]] = (
            sum(p["attempts"] for p in points),
            sum(p["failures"] for p in points),
            [(p["ttft_p50"], p["throughput_p95"]) for p in points],  # oldest first
            # Which bucket shows the ejection depends on when the router handled the
            # batch (a 10 s edge may fall between the two routers' runs); that it
            # shows is what says the transition reached the worker's series.
            "ejected" in {p["health"] for p in s["points"]},
        )
    return {"rows": rows, "series": series}


async def _feed_and_read(app, batch: router_pb2.RecordOutcomeRequest) -> dict:
    async with grpc.aio.insecure_channel(app.grpc_address) as channel:
        ack = await router_pb2_grpc.RouterStub(channel).RecordOutcome(batch)
    assert ack.accepted == len(batch.outcomes)
    await app.core.store.settled()
    async with aiohttp.ClientSession(app.http_url) as http:
        async with http.get(f"{GLM_PATH}/endpoints") as response:
            endpoints = await response.json()
        async with http.get(f"{GLM_PATH}/timeseries?range=15m") as response:
            timeseries = await response.json()
    return _figures(endpoints, timeseries)


async def test_a_router_with_the_worker_answers_as_one_without(tmp_path: Path) -> None:
    import time

    batch = _batch(time.time())
    answers = []
    for worker in (True, False):
        directory = tmp_path / str(worker)
        directory.mkdir()
        app = loopback_router(directory, drain_seconds=1.0, seed=5, sketch_worker=worker)
        await app.start()
        try:
            assert (app.sketch_worker is not None) is worker
            answers.append(await _feed_and_read(app, batch))
        finally:
            await app.stop()
    with_worker, in_process = answers
    assert with_worker == in_process
    assert with_worker["rows"]["baseten"]["sample_size_last_1h"] > 0
    assert with_worker["rows"]["deepinfra"]["status"] == "ejected"
    assert with_worker["series"]["deepinfra"][3]  # the transition reached the worker


async def test_a_lost_worker_leaves_a_router_that_serves(tmp_path: Path) -> None:
    import time

    app = loopback_router(tmp_path, drain_seconds=1.0, sketch_worker=True)
    await app.start()
    try:
        worker = app.sketch_worker
        assert worker is not None and worker.pid is not None
        async with aiohttp.ClientSession(app.http_url) as http:
            async with http.get("/metrics") as response:
                assert "router_sketch_worker_up 1.0" in await response.text()
            os.kill(worker.pid, signal.SIGKILL)
            await wait_for(lambda: not worker.running)
            async with http.get("/metrics") as response:
                assert "router_sketch_worker_up 0.0" in await response.text()
            async with grpc.aio.insecure_channel(app.grpc_address) as channel:
                stub = router_pb2_grpc.RouterStub(channel)
                ack = await stub.RecordOutcome(_batch(time.time()))
                assert ack.accepted > 0
                ranked = await stub.RankProviders(router_pb2.RankProvidersRequest(model=MODEL))
                assert ranked.endpoints
            await app.core.store.settled()
            async with http.get(f"{GLM_PATH}/endpoints") as response:
                rows = (await response.json())["data"]["endpoints"]
            assert {r["provider_name"]: r["sample_size_last_1h"] for r in rows}["baseten"] > 0
            async with http.get(f"{GLM_PATH}/timeseries") as response:
                assert response.status == 200
    finally:
        await app.stop()


async def test_stopping_the_router_stops_its_worker(tmp_path: Path) -> None:
    app = loopback_router(tmp_path, drain_seconds=1.0, sketch_worker=True)
    await app.start()
    worker = app.sketch_worker
    assert worker is not None and worker.exit_code is None
    await app.stop()
    assert worker.exit_code == 0
    assert app.sketch_worker is None


async def test_a_stalled_worker_slows_ingestion_not_memory(tmp_path: Path) -> None:
    """A worker that stops reading (SIGSTOP) fills the router's bounded buffer; ingestion
    then waits in ``drain`` (and so does its caller) instead of queueing every outcome;
    once the worker resumes, every outcome is counted."""
    import time

    from router_service.callers import CallerLimitsConfig
    from router_service.security import SecuritySettings

    limits = CallerLimitsConfig(outcomes_per_second=1e6, outcome_burst=1e6)
    security = SecuritySettings(caller_limits=limits)
    app = loopback_router(tmp_path, drain_seconds=1.0, sketch_worker=True, security=security)
    await app.start()
    worker = app.sketch_worker
    assert worker is not None and worker.pid is not None
    # ~130k outcomes, ~5 MB of columns: several times the buffer and the socket's own.
    batches = [_batch(time.time())] * 300
    sent = sum(len(b.outcomes) for b in batches)
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        async with grpc.aio.insecure_channel(app.grpc_address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)

            async def report() -> int:
                return sum([(await stub.RecordOutcome(b)).accepted for b in batches])

            task = asyncio.create_task(report())
            sizes: list[int] = []

            def stalled() -> bool:
                sizes.append(worker.queued_bytes)
                return len(sizes) >= 10 and len(set(sizes[-10:])) == 1 and sizes[-1] > 0

            await wait_for(stalled)
            assert not task.done()  # waiting for the worker, not finished without it
            assert WRITE_HIGH_WATER <= max(sizes) <= WRITE_HIGH_WATER + 64 * 1024
            os.kill(worker.pid, signal.SIGCONT)
            assert await task == sent
        await app.core.store.settled()
        stats = app.core.store.snapshot(app.core.known_endpoints)
        assert sum(s.uptime_1h.attempts for s in stats.values()) == sent
        assert worker.running
    finally:
        os.kill(worker.pid, signal.SIGCONT)
        await app.stop()


async def test_a_catalog_reload_drops_a_removed_endpoint_in_the_worker_too(tmp_path: Path) -> None:
    """Removed, then added back: it starts from nothing, as without the worker; the
    endpoints that stayed keep their stats."""
    app = loopback_router(tmp_path, drain_seconds=1.0, sketch_worker=True, watch_catalog=False)
    await app.start()
    try:
        core = app.core
        cerebras, baseten = EndpointKey(MODEL, "cerebras"), EndpointKey(MODEL, "baseten")
        async with grpc.aio.insecure_channel(app.grpc_address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            batch = [outcome("cerebras"), outcome("baseten"), outcome("baseten")]
            await stub.RecordOutcome(router_pb2.RecordOutcomeRequest(outcomes=batch))
        await core.store.settled()
        assert core.store.stats(baseten).uptime_1h.attempts == 2
        path = Path(app.settings.config_path)
        original = path.read_text()
        line = (
            "      - {provider: baseten, upstream_model: zai-org/GLM-4.7, "
            "input_price_per_million: 0.60, output_price_per_million: 2.20}\n"
        )
        assert line in original
        path.write_text(original.replace(line, ""))
        assert app.reload_catalog()
        assert baseten not in core.store.keys()
        path.write_text(original)
        assert app.reload_catalog()
        await core.store.settled()
        assert core.store.stats(baseten).uptime_1h.attempts == 0
        assert core.store.stats(cerebras).uptime_1h.attempts == 1
    finally:
        await app.stop()
