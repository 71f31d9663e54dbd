"""Router benchmarks: rank() in process, RankProviders over gRPC vs a bare echo RPC, ingestion.

    .venv/bin/python bench/bench_router.py [--quick]

Machines here are shared and noisy, so gRPC figures are reported as a ratio to
an echo RPC measured in the same run on the same grpc.aio server: the echo
takes the same RankProvidersRequest and returns a pre-built
RankProvidersResponse of the same content (so both sides still parse and
serialise the same messages), and the ratio isolates what ranking and building
the answer add to a round trip.
Ingestion is measured with the client in a separate process sending
pre-serialised StreamOutcomes batches, so the router's event loop (one core)
does only the server side: parse, validate, store, health.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import statistics
import time
from typing import Any

import grpc

from router_common.catalog import parse_catalog
from router_common.domain import EndpointKey, Sort
from router_common.pb import router_pb2, router_pb2_grpc
from router_service.core import RouterCore
from router_service.grpc_api import RouterServicer
from router_service.ingest import GroupedRecorder
from router_service.model import Outcome
from router_service.ranking import RoutingRequest

MODEL = "bench/model"
ECHO_METHOD = "/bench.Echo/Echo"


def synthetic_catalog(endpoints: int) -> str:
    """A catalog with one model served by ``endpoints`` providers, half of them ZDR."""
    lines = ["providers:"]
    for i in range(endpoints):
        lines.append(
            f"  p{i}: {{base_url: 'https://p{i}.example/v1', api_key_env: P{i}_KEY, "
            f"zero_data_retention: {'true' if i % 2 == 0 else 'false'}}}"
        )
    lines += ["models:", f"  {MODEL}:", "    endpoints:"]
    for i in range(endpoints):
        lines.append(
            f"      - {{provider: p{i}, input_price_per_million: {0.1 + i * 0.05:.2f}, "
            f"output_price_per_million: {0.4 + i * 0.1:.2f}}}"
        )
    return "\n".join(lines) + "\n"


def populated_core(endpoints: int) -> RouterCore:
    """A core whose endpoints all have an hour of data, so ranking takes its full path."""
    core = RouterCore(
        parse_catalog(synthetic_catalog(endpoints)), "bench", time.time, random.Random(1)
    )
    rng = random.Random(2)
    now = time.time()
    outcomes = [
        Outcome(
            endpoint=EndpointKey(MODEL, f"p{i}"),
            timestamp=now - rng.uniform(0, 3000),
            success=True,
            ttft_ms=rng.lognormvariate(5.5 + i * 0.01, 0.4),
            tokens_per_second=rng.lognormvariate(4.5, 0.3),
            output_tokens=100,
            duration_ms=1000.0,
        )
        for i in range(endpoints)
        for _ in range(200)
    ]
    core.store.record_many(outcomes)
    core.refresh()
    return core


def bench_in_process(endpoints: int, calls: int) -> dict[str, float]:
    core = populated_core(endpoints)
    requests = {
        "load_balance": RoutingRequest(model=MODEL),
        "sort=ttft p90": RoutingRequest(model=MODEL, sort=Sort.TTFT, percentile=0.9),
        "sort=cost+zdr": RoutingRequest(
            model=MODEL,
            sort=Sort.COST,
            zero_data_retention=True,
            input_tokens=1000,
            max_output_tokens=500,
        ),
    }
    results = {}
    for label, request in requests.items():
        for _ in range(200):
            core.rank(request)
        # Best of 5 rounds, as timeit advises: the minimum is the cost of the code,
        # the rest is other tenants of this shared machine.
        rounds = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls // 5):
                core.rank(request)
            rounds.append((time.perf_counter() - start) / (calls // 5) * 1e6)
        results[label] = min(rounds)
    return results


async def _serve(
    core: RouterCore, echo_response: router_pb2.RankProvidersResponse
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    router_pb2_grpc.add_RouterServicer_to_server(RouterServicer(core, lambda: None), server)

    async def echo(request: router_pb2.RankProvidersRequest, context) -> object:
        return echo_response

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo,
                request_deserializer=router_pb2.RankProvidersRequest.FromString,
                response_serializer=router_pb2.RankProvidersResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _latencies(call, request, concurrency: int, total: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    per_worker = total // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            start = time.perf_counter()
            await call(request)
            latencies.append((time.perf_counter() - start) * 1e6)

    for _ in range(50):
        await call(request)
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return latencies, len(latencies) / elapsed


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1]


def _rank_request() -> router_pb2.RankProvidersRequest:
    return router_pb2.RankProvidersRequest(
        model=MODEL, preferences=router_pb2.RoutingPreferences(sort=router_pb2.SORT_BY_TTFT)
    )


async def _measure_rounds(port: int, total: int) -> list[dict[str, Any]]:
    """Echo and RankProviders latencies at 1 and 32 callers, rounds interleaved."""
    request = _rank_request()
    rows = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        rank = router_pb2_grpc.RouterStub(channel).RankProviders
        echo = channel.unary_unary(
            ECHO_METHOD,
            request_serializer=router_pb2.RankProvidersRequest.SerializeToString,
            response_deserializer=router_pb2.RankProvidersResponse.FromString,
        )
        for concurrency in (1, 32):
            # Interleave echo and rank rounds so drift in machine load hits both alike.
            echo_lat, rank_lat, echo_cps, rank_cps = [], [], [], []
            for _ in range(3):
                lat, cps = await _latencies(echo, request, concurrency, total // 3)
                echo_lat += lat
                echo_cps.append(cps)
                lat, cps = await _latencies(rank, request, concurrency, total // 3)
                rank_lat += lat
                rank_cps.append(cps)
            rows.append(
                {
                    "concurrency": concurrency,
                    "echo_p50": _pct(echo_lat, 0.5),
                    "echo_p99": _pct(echo_lat, 0.99),
                    "rank_p50": _pct(rank_lat, 0.5),
                    "rank_p99": _pct(rank_lat, 0.99),
                    "echo_cps": statistics.median(echo_cps),
                    "rank_cps": statistics.median(rank_cps),
                }
            )
    return rows


def _remote_client(port: int, total: int, result: multiprocessing.Queue) -> None:
    """Child process: the callers live in another process, as sidecars do."""
    result.put(asyncio.run(_measure_rounds(port, total)))


async def bench_grpc(total: int, remote: bool) -> list[dict[str, Any]]:
    """RankProviders vs the echo; callers in this process or (``remote``) in a child."""
    core = populated_core(8)
    from router_service.wire import rank_response, routing_request

    sample = rank_response(core.rank(routing_request(_rank_request())), MODEL, "bench", 0.0)
    server, port = await _serve(core, sample)
    if remote:
        spawn = multiprocessing.get_context("spawn")
        queue = spawn.Queue()
        child = spawn.Process(target=_remote_client, args=(port, total, queue))
        child.start()
        rows = await asyncio.get_running_loop().run_in_executor(None, queue.get)
        child.join()
    else:
        rows = await _measure_rounds(port, total)
    await server.stop(None)
    for row in rows:
        row["payload_bytes"] = sample.ByteSize()
        row["callers_in"] = "another process" if remote else "server's process"
    return rows


def _outcome_batches(batches: int, per_batch: int, endpoints: int) -> list[bytes]:
    rng = random.Random(3)
    now = time.time()
    out = []
    for _ in range(batches):
        msg = router_pb2.RecordOutcomeRequest()
        for _ in range(per_batch):
            msg.outcomes.add(
                model=MODEL,
                provider=f"p{rng.randrange(endpoints)}",
                started_at=now,
                success=True,
                error_class=router_pb2.ERROR_CLASS_NONE,
                http_status=200,
                ttft_ms=rng.lognormvariate(5.5, 0.4),
                tokens_per_second=rng.lognormvariate(4.5, 0.3),
                output_tokens=100,
                duration_ms=900.0,
            )
        out.append(msg.SerializeToString())
    return out


def _stream_client(port: int, batches: list[bytes], result: multiprocessing.Queue) -> None:
    """Runs in a child process: streams pre-serialised batches, reports the ack."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: grpc.StreamUnaryMultiCallable = channel.stream_unary(
            "/router.v1.Router/StreamOutcomes",
            response_deserializer=router_pb2.OutcomeAck.FromString,
        )
        start = time.perf_counter()
        ack = call(iter(batches))
        result.put((ack.accepted, ack.rejected, time.perf_counter() - start))


async def bench_ingest(batches: int, per_batch: int) -> dict[str, float]:
    core = populated_core(8)
    payload = _outcome_batches(batches, per_batch, 8)
    server, port = await _serve(core, router_pb2.RankProvidersResponse())
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    child = spawn.Process(target=_stream_client, args=(port, payload, queue))
    child.start()
    loop = asyncio.get_running_loop()
    accepted, rejected, elapsed = await loop.run_in_executor(None, queue.get)
    child.join()
    refresh_start = time.perf_counter()
    core.refresh()
    refresh_s = time.perf_counter() - refresh_start
    await server.stop(None)
    # In-process ceiling: validation + store + health without gRPC, on the path
    # the server's Ingestor takes (GroupedRecorder: RouterCore.record's result).
    messages = [router_pb2.RecordOutcomeRequest.FromString(b).outcomes for b in payload]
    recorder = GroupedRecorder(core)
    start = time.perf_counter()
    for outcomes in messages:
        recorder.record(outcomes)
    core_elapsed = time.perf_counter() - start
    return {
        "accepted": accepted,
        "rejected": rejected,
        "outcomes_per_s": accepted / elapsed,
        "core_outcomes_per_s": batches * per_batch / core_elapsed,
        "refresh_ms": refresh_s * 1e3,
    }


def print_starvation(
    quick: bool,
    share: float | None = None,
    slice_outcomes: int | None = None,
    sketch_worker: bool = True,
) -> None:
    from bench_router_load import starvation

    calls, rounds = (1_600, 2) if quick else (3_200, 3)
    r = asyncio.run(starvation(calls, rounds, share, slice_outcomes, sketch_worker))
    shown = "default" if share is None else f"{share:g}"
    if slice_outcomes is not None:
        shown += f", slices of {slice_outcomes}"
    shown += ", sketch worker" if sketch_worker else ", sketches in process"
    print(
        "## Ranking while 4 StreamOutcomes writers run at full speed (32 callers, "
        f"ingest share {shown})\n"
    )
    print(
        "| RankProviders | alone | with 4 writers | **ratio** (p99 target ≤ 2) |\n|---|---|---|---|"
    )
    for q in ("p50", "p99"):
        alone, loaded = r[f"alone_{q}"], r[f"loaded_{q}"]
        print(f"| {q} (ms) | {alone:.1f} | {loaded:.1f} | **{loaded / alone:.2f}×** |")
    print(
        f"\np99 ratio per round (loaded/alone, interleaved): best "
        f"**{r['p99_ratio_best']:.2f}×**, median **{r['p99_ratio_median']:.2f}×**, "
        f"worst {r['p99_ratio_worst']:.2f}× over {rounds} rounds.\n"
        f"\nIngestion during the loaded rounds: **{r['ingest_per_s']:,.0f} outcomes/s** median, "
        f"{r['ingest_min_per_s']:,.0f} lowest (target ≥ 30,000); {r['calls']:,} calls per side. "
        f"Ingestion took {r['ingest_share']:.0%} of the router's wall time applying outcomes "
        f"and {r['refresh_share']:.0%} refreshing the quantiles they changed; the router "
        f"process used {r['router_cpu']:.0%} of a core.\n"
    )
    print(
        "CPU (share of one core, median of rounds): router alone "
        f"{r['router_alone_cpu']:.0%}, loaded {r['router_cpu']:.0%}, its sketch worker "
        f"{r['worker_cpu']:.0%}; the 32 callers' process "
        f"alone {r['ranker_alone_cpu']:.0%}, loaded {r['ranker_loaded_cpu']:.0%}; "
        f"the 4 writers {r['writers_cpu']:.0%} together (the machine has 2 cores). "
        f"Loop time per outcome applied: {r['ingest_share'] / r['ingest_per_s'] * 1e6:.1f} µs "
        f"wall, {r['ingest_cpu_share'] / r['ingest_per_s'] * 1e6:.1f} µs of loop-thread CPU. "
        f"Garbage collections in the router process during the loaded rounds: "
        f"{r['gc_pauses']:,}, longest {r['gc_max_ms']:.1f} ms, {r['gc_total_ms']:.0f} ms in all.\n"
    )


def print_auth_cost(quick: bool) -> None:
    from bench_router_load import auth_cost

    calls, rounds = (600, 3) if quick else (2_000, 5)
    print("## Cost of authentication: RankProviders latency (ms), same run, interleaved\n")
    print(
        "| callers | no auth p50 | token p50 | mTLS p50 | **token ratio** | **mTLS ratio** "
        "(target ≤ 1.2) | no auth p99 | token p99 | mTLS p99 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for callers in (1, 32):
        r = asyncio.run(auth_cost(calls, rounds, callers))
        print(
            f"| {callers} | {r['none_p50']:.2f} | {r['token_p50']:.2f} | {r['mtls_p50']:.2f} | "
            f"**{r['token_p50'] / r['none_p50']:.2f}×** | "
            f"**{r['mtls_p50'] / r['none_p50']:.2f}×** | "
            f"{r['none_p99']:.2f} | {r['token_p99']:.2f} | {r['mtls_p99']:.2f} |"
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument(
        "--scenario",
        choices=["all", "base", "starvation", "auth"],
        default="all",
        help="base = the tables below; starvation and auth: bench_router_load.py",
    )
    parser.add_argument(
        "--ingest-share",
        type=float,
        default=None,
        help="starvation: the router's --ingest-share (default: its default; 1 = unpaced)",
    )
    parser.add_argument(
        "--ingest-slice",
        type=int,
        default=None,
        help="starvation: IngestPacing.slice_outcomes (default: its default)",
    )
    parser.add_argument(
        "--sketch-worker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="starvation: the router's --sketch-worker (default on, as router-service)",
    )
    args = parser.parse_args()
    if args.scenario in ("all", "starvation"):
        print_starvation(args.quick, args.ingest_share, args.ingest_slice, args.sketch_worker)
    if args.scenario in ("all", "auth"):
        print_auth_cost(args.quick)
    if args.scenario not in ("all", "base"):
        return
    calls = 2_000 if args.quick else 20_000
    rpcs = 3_000 if args.quick else 15_000

    print("## RankProviders in process (µs per call)\n")
    print("| endpoints | strategy | µs/call | target |")
    print("|---|---|---|---|")
    for endpoints in (8, 50):
        for label, micros in bench_in_process(endpoints, calls).items():
            target = "≤ 30" if endpoints == 8 else ""
            print(f"| {endpoints} | {label} | {micros:.1f} | {target} |")

    print("\n## RankProviders over gRPC on loopback vs an echo RPC of the same size (µs)\n")
    print(
        "| callers | callers run in | response bytes | echo p50 | rank p50 "
        "| **p50 ratio** (target ≤ 1.3) | echo p99 | rank p99 | echo calls/s | rank calls/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for remote in (False, True):
        for row in asyncio.run(bench_grpc(rpcs, remote)):
            print(
                f"| {row['concurrency']} | {row['callers_in']} | {row['payload_bytes']} | "
                f"{row['echo_p50']:.0f} | {row['rank_p50']:.0f} | "
                f"**{row['rank_p50'] / row['echo_p50']:.2f}×** | {row['echo_p99']:.0f} | "
                f"{row['rank_p99']:.0f} | {row['echo_cps']:.0f} | {row['rank_cps']:.0f} |"
            )

    batches, per_batch = (40, 500) if args.quick else (200, 500)
    ingest = asyncio.run(bench_ingest(batches, per_batch))
    print("\n## Outcome ingestion through StreamOutcomes (router on one event loop)\n")
    print(
        "| outcomes | via gRPC outcomes/s (target ≥ 50,000) | core only outcomes/s "
        "| refresh after (ms) |"
    )
    print("|---|---|---|---|")
    print(
        f"| {ingest['accepted']:,} (rejected {ingest['rejected']}) | "
        f"{ingest['outcomes_per_s']:,.0f} | {ingest['core_outcomes_per_s']:,.0f} | "
        f"{ingest['refresh_ms']:.1f} |"
    )


if __name__ == "__main__":
    main()
