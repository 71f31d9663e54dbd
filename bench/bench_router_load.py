"""Router under load: ranking while ingestion runs flat out, and the cost of authentication.

Imported by ``bench/bench_router.py`` (``--scenario starvation`` or ``auth``), run as a script.
The router is the real ``RouterApp`` (refresh loop, per-caller ledger,
authentication) in this process; rankers and writers are child processes, as
sidecars are. Figures are ratios against a baseline measured in the same run,
rounds interleaved, because the machines are shared and noisy.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from router_common.pb import router_pb2, router_pb2_grpc

MODEL = "bench/model"
WRITER_TOKENS = [f"writer-token-{i}-0123456789" for i in range(4)]
RANK_TOKEN = "ranker-token-0123456789"


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1]


def _tokens_file(directory: Path) -> Path:
    lines = ["callers:", f"  rankers: {{token: {RANK_TOKEN}, scopes: [rank, read]}}"]
    for i, token in enumerate(WRITER_TOKENS):
        lines.append(f"  writer-{i}: {{token: {token}, scopes: [report]}}")
    path = directory / "tokens.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _rank_request() -> router_pb2.RankProvidersRequest:
    return router_pb2.RankProvidersRequest(
        model=MODEL, preferences=router_pb2.RoutingPreferences(sort=router_pb2.SORT_BY_TTFT)
    )


# -- child processes --------------------------------------------------------------


def _channel(address: str, tls: dict[str, bytes] | None) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(address)
    creds = grpc.ssl_channel_credentials(tls["ca"], tls["key"], tls["cert"])
    return grpc.aio.secure_channel(
        address, creds, options=(("grpc.ssl_target_name_override", "localhost"),)
    )


async def _rank_calls(
    address: str,
    callers: int,
    calls: int,
    token: str | None,
    tls: dict[str, bytes] | None,
    window: list[float] | None = None,
) -> list[float]:
    """Latencies (ms) of ``calls`` RankProviders calls by ``callers`` concurrent callers;
    ``window`` gets the wall-clock start and end of the measured calls."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    latencies: list[float] = []
    request = _rank_request()
    async with _channel(address, tls) as channel:
        rank = router_pb2_grpc.RouterStub(channel).RankProviders
        for _ in range(50):
            await rank(request, metadata=metadata)

        async def worker() -> None:
            for _ in range(calls // callers):
                start = time.perf_counter()
                await rank(request, metadata=metadata)
                latencies.append((time.perf_counter() - start) * 1e3)

        began = time.time()
        await asyncio.gather(*(worker() for _ in range(callers)))
        if window is not None:
            window += [began, time.time()]
    return latencies


def _ranker(address, callers, calls, token, tls, out: multiprocessing.Queue) -> None:
    out.put(asyncio.run(_rank_calls(address, callers, calls, token, tls)))


def _ranker_cpu(address, callers, calls, token, tls, out: multiprocessing.Queue) -> None:
    """``_ranker`` that also reports the CPU its process used per second of the calls,
    and the wall-clock window of the measured calls."""
    cpu, start = time.process_time(), time.perf_counter()
    window: list[float] = []
    latencies = asyncio.run(_rank_calls(address, callers, calls, token, tls, window))
    out.put((latencies, (time.process_time() - cpu) / (time.perf_counter() - start), window))


def _batches(per_batch: int, count: int) -> list[bytes]:
    import random

    rng = random.Random(5)
    out = []
    for _ in range(count):
        msg = router_pb2.RecordOutcomeRequest()
        for _ in range(per_batch):
            msg.outcomes.add(
                model=MODEL,
                provider=f"p{rng.randrange(8)}",
                success=True,
                http_status=200,
                ttft_ms=rng.lognormvariate(5.5, 0.4),
                tokens_per_second=rng.lognormvariate(4.5, 0.3),
                output_tokens=100,
                duration_ms=900.0,
            )
        out.append(msg.SerializeToString())
    return out


def _writer(address: str, token: str, started, stop, out: multiprocessing.Queue) -> None:
    """Streams 8 × 500-outcome batches per call, back to back, until ``stop`` is set."""
    payload = _batches(500, 8)
    accepted = 0
    with grpc.insecure_channel(address) as channel:
        call: grpc.StreamUnaryMultiCallable = channel.stream_unary(
            "/router.v1.Router/StreamOutcomes",
            response_deserializer=router_pb2.OutcomeAck.FromString,
        )
        metadata = (("authorization", f"Bearer {token}"),)
        call(iter(payload[:1]), metadata=metadata)
        started.set()
        start, cpu = time.perf_counter(), time.process_time()
        refused = 0
        while not stop.is_set():
            try:
                accepted += call(iter(payload), metadata=metadata).accepted
            except grpc.RpcError as exc:
                # Over the caller's rate limit: back off as a sidecar does (the
                # batches applied before the refusal are not counted here).
                if exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                refused += 1
                time.sleep(0.01)
        out.put((accepted, time.perf_counter() - start, refused, time.process_time() - cpu))


# -- scenarios ----------------------------------------------------------------------


class GcPauses:
    """Collector pauses in this (the router's) process: a full collection stops the
    serving loop for every in-flight RankProviders call at once, so it lands in p99."""

    def __init__(self) -> None:
        self.pauses_ms: list[float] = []
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses_ms.append((time.perf_counter() - self._started) * 1e3)

    def close(self) -> None:
        gc.callbacks.remove(self._on_gc)


class RouterCounters:
    """The router's ingestion counters and process CPU, sampled every 20 ms on its loop,
    so rates cover exactly the window in which the ranking child was calling: the
    child's start-up, during which ranking is quiet and ingestion runs unpaced, is
    left out (counting it inflated outcomes/s)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.samples: list[tuple[float, ...]] = []
        self._task = asyncio.ensure_future(self._sample())

    def _read(self) -> tuple[float, ...]:
        ingestor = self.app.servicer.ingestor
        accepted = sum(self.app.servicer.ledger.accepted.values())
        return (
            time.time(),
            accepted,
            ingestor.busy_s,
            ingestor.busy_cpu_s,
            ingestor.refresh_s,
            time.process_time(),
            _worker_cpu_s(self.app),
        )

    async def _sample(self) -> None:
        while True:
            self.samples.append(self._read())
            await asyncio.sleep(0.02)

    def rates(self, began: float, ended: float) -> dict[str, float]:
        """Per second of [began, ended]: outcomes, loop shares, process CPU."""
        self._task.cancel()
        inside = [s for s in self.samples if began <= s[0] <= ended]
        first, last = inside[0], inside[-1]
        span = last[0] - first[0]
        names = ("accepted", "busy", "busy_cpu", "refresh", "cpu", "worker_cpu")
        return {name: (last[i + 1] - first[i + 1]) / span for i, name in enumerate(names)}


def _worker_cpu_s(app: Any) -> float:
    """CPU seconds the sketch worker process has used (0 without one): /proc/PID/stat."""
    worker = app.sketch_worker
    if worker is None or worker.pid is None:
        return 0.0
    fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def _router(
    directory: Path,
    share: float | None = None,
    slice_outcomes: int | None = None,
    sketch_worker: bool = True,
    **security: Any,
):
    from bench_router import synthetic_catalog

    from router_service.app import RouterApp, Settings
    from router_service.gc_pauses import freeze_startup_heap
    from router_service.ingest import IngestPacing
    from router_service.security import SecuritySettings

    catalog = directory / "catalog.yaml"
    catalog.write_text(synthetic_catalog(8))
    default = IngestPacing()
    app = RouterApp(
        Settings(
            config_path=str(catalog),
            grpc_host="127.0.0.1",
            grpc_port=0,
            http_host="127.0.0.1",
            http_port=0,
            watch_catalog=False,
            seed=1,
            sketch_worker=sketch_worker,
            security=SecuritySettings(**security),
            ingest_pacing=IngestPacing(
                share=default.share if share is None else share,
                slice_outcomes=default.slice_outcomes if slice_outcomes is None else slice_outcomes,
            ),
        )
    )
    await app.start()
    freeze_startup_heap()  # as router-service does after start
    return app


async def _in_child(target, *args: Any) -> Any:
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    child = spawn.Process(target=target, args=(*args, queue))
    child.start()
    result = await asyncio.get_running_loop().run_in_executor(None, queue.get, True, 600)
    await asyncio.get_running_loop().run_in_executor(None, child.join)
    return result


async def starvation(
    calls: int,
    rounds: int,
    share: float | None = None,
    slice_outcomes: int | None = None,
    sketch_worker: bool = True,
) -> dict[str, float]:
    """RankProviders p50/p99 at 32 callers, alone and with 4 writers at full speed.

    ``share``: the router's ``IngestPacing.share`` (None: its default; 1: unpaced).
    ``sketch_worker``: as ``router-service`` runs by default (``--no-sketch-worker``: off).
    """
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        app = await _router(
            directory,
            share,
            slice_outcomes,
            sketch_worker,
            auth_tokens=str(_tokens_file(directory)),
        )
        address = app.grpc_address
        spawn = multiprocessing.get_context("spawn")
        # An hour of data first, so ranking sorts real quantiles.
        await _in_child(_ranker, address, 1, 50, RANK_TOKEN, None)  # warm
        alone: list[float] = []
        loaded: list[float] = []
        ingest_rates: list[float] = []
        round_ratios: list[float] = []
        busy: list[float] = []
        refresh: list[float] = []
        gc_loaded: list[float] = []
        busy_cpu: list[float] = []
        router_cpu: list[float] = []
        worker_cpu: list[float] = []
        cpu: dict[str, list[float]] = {
            "router_alone": [],
            "ranker_alone": [],
            "ranker_loaded": [],
            "writers": [],
        }
        for _ in range(rounds):
            counters = RouterCounters(app)
            alone_round, ranker_cpu, window = await _in_child(
                _ranker_cpu, address, 32, calls, RANK_TOKEN, None
            )
            cpu["router_alone"].append(counters.rates(*window)["cpu"])
            cpu["ranker_alone"].append(ranker_cpu)
            alone += alone_round
            stop = spawn.Event()
            queue = spawn.Queue()
            writers = []
            for token in WRITER_TOKENS:
                started = spawn.Event()
                proc = spawn.Process(target=_writer, args=(address, token, started, stop, queue))
                proc.start()
                writers.append((proc, started))
            loop = asyncio.get_running_loop()
            for _, started in writers:
                if not await loop.run_in_executor(None, started.wait, 60):
                    raise RuntimeError("a writer did not start")
            counters = RouterCounters(app)
            pauses = GcPauses()
            loaded_round, ranker_cpu, window = await _in_child(
                _ranker_cpu, address, 32, calls, RANK_TOKEN, None
            )
            rates = counters.rates(*window)
            cpu["ranker_loaded"].append(ranker_cpu)
            pauses.close()
            gc_loaded += pauses.pauses_ms
            loaded += loaded_round
            busy.append(rates["busy"])
            refresh.append(rates["refresh"])
            busy_cpu.append(rates["busy_cpu"])
            router_cpu.append(rates["cpu"])
            worker_cpu.append(rates["worker_cpu"])
            round_ratios.append(_pct(loaded_round, 0.99) / _pct(alone_round, 0.99))
            ingest_rates.append(rates["accepted"])
            stop.set()
            # Joins run off the loop: the router serves the writers' last calls on it.
            writer_cpu = 0.0
            for _ in writers:
                _, writer_s, _, writer_cpu_s = await loop.run_in_executor(None, queue.get, True, 60)
                writer_cpu += writer_cpu_s / writer_s
            cpu["writers"].append(writer_cpu)
            for proc, _ in writers:
                await loop.run_in_executor(None, proc.join)
        await app.stop()
    return {
        "alone_p50": _pct(alone, 0.5),
        "alone_p99": _pct(alone, 0.99),
        "loaded_p50": _pct(loaded, 0.5),
        "loaded_p99": _pct(loaded, 0.99),
        "ingest_per_s": statistics.median(ingest_rates),
        "ingest_min_per_s": min(ingest_rates),
        "p99_ratio_best": min(round_ratios),
        "p99_ratio_median": statistics.median(round_ratios),
        "p99_ratio_worst": max(round_ratios),
        "calls": len(alone),
        "alone_p90": _pct(alone, 0.9),
        "loaded_p90": _pct(loaded, 0.9),
        "alone_p999": _pct(alone, 0.999),
        "loaded_p999": _pct(loaded, 0.999),
        "paced_s": app.servicer.ingestor.paced_s,
        "ingest_share": statistics.median(busy),
        "refresh_share": statistics.median(refresh),
        "gc_pauses": len(gc_loaded),
        "gc_max_ms": max(gc_loaded, default=0.0),
        "gc_total_ms": sum(gc_loaded),
        "ingest_cpu_share": statistics.median(busy_cpu),
        "router_cpu": statistics.median(router_cpu),
        "worker_cpu": statistics.median(worker_cpu),
        **{f"{name}_cpu": statistics.median(values) for name, values in cpu.items()},
    }


async def auth_cost(calls: int, rounds: int, callers: int) -> dict[str, float]:
    """RankProviders p50 with no auth, a bearer token and mTLS; same run, interleaved."""
    import trustme

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("bench-client", common_name="bench-client")
        server.private_key_and_cert_chain_pem.write_to_path(str(directory / "server.pem"))
        server.private_key_pem.write_to_path(str(directory / "server.key"))
        ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        tls = {
            "ca": ca.cert_pem.bytes(),
            "key": client.private_key_pem.bytes(),
            "cert": client.cert_chain_pems[0].bytes(),
        }
        plain = await _router(directory, allow_unauthenticated=True)
        tokens = await _router(directory, auth_tokens=str(_tokens_file(directory)))
        mtls = await _router(
            directory,
            tls_cert=str(directory / "server.pem"),
            tls_key=str(directory / "server.key"),
            tls_client_ca=str(directory / "ca.pem"),
        )
        modes = {
            "none": (plain.grpc_address, None, None),
            "token": (tokens.grpc_address, RANK_TOKEN, None),
            "mtls": (mtls.grpc_address, None, tls),
        }
        latencies: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(rounds):
            for mode, (address, token, creds) in modes.items():
                latencies[mode] += await _in_child(_ranker, address, callers, calls, token, creds)
        for app in (plain, tokens, mtls):
            await app.stop()
    return {f"{m}_p50": _pct(v, 0.5) for m, v in latencies.items()} | {
        f"{m}_p99": _pct(v, 0.99) for m, v in latencies.items()
    }
