"""Replicas over Redis: convergence lag, ingestion cost, time to SERVING after a restart.

    .venv/bin/python bench/bench_replication.py [--quick]

Real parts: Debian's redis-server on a loopback port and ``router-service``
processes (tests/replication/fleet.py starts both).

* **Convergence lag.** Three replicas; a load process sends outcomes to
  replica A at a fixed rate (1,000 and 5,000/s, batches of 25 every 5 ms or
  every 25 ms). Every 100 ms it also sends one *marker* outcome for an
  endpoint no other traffic touches and notes when A acknowledged it; two
  watcher processes poll B and C (GetModelEndpoints over gRPC, every 2 ms) and
  note when the marker count goes up. Lag = seen on B/C - acknowledged by A:
  what a sidecar on B would see after a sidecar on A reported, including
  Redis, the peer's apply and its coalesced stats refresh (0.1 s at most).
* **Ingestion.** One router, clients in another process sending
  RecordOutcome batches of 500 as fast as they are acknowledged, with and
  without ``--redis``, rounds interleaved, best of N: the ratio is what
  publishing (encode + buffer + XADD on the same event loop) and applying
  health in stream order cost.
* **Time to SERVING.** Redis is filled with one hour at 1,000 outcomes/s
  (3.6 M outcomes over the example catalog's endpoints, as the checkpoint a
  running fleet writes, plus 5 s of stream after it); then ``router-service
  --redis`` is started and timed from spawn to grpc.health SERVING. Baseline
  in the same run: the same process without ``--redis`` (interpreter start,
  imports, catalog).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from router_common.pb import router_pb2, router_pb2_grpc
from tests.replication.fleet import (
    EXAMPLE_CATALOG,
    MODEL,
    RedisServer,
    RouterProcess,
    outcome,
)

MARKER_MODEL = "openai/gpt-oss-120b"
MARKER_PROVIDER = "groq"
TRAFFIC_PROVIDERS = ("cerebras", "together", "fireworks", "deepinfra", "baseten")


def _load(address: str, rate: int, seconds: float, marker_times) -> None:
    """Send ``rate`` outcomes/s to ``address``; every 100 ms one marker, ack time noted."""
    rng = random.Random(1)
    tick = 0.005 if rate >= 5000 else 0.025
    per_tick = max(1, round(rate * tick))
    batches = [
        router_pb2.RecordOutcomeRequest(
            outcomes=[
                outcome(rng.choice(TRAFFIC_PROVIDERS), ttft=rng.lognormvariate(5.5, 0.4))
                for _ in range(per_tick)
            ]
        )
        for _ in range(64)
    ]
    marker = router_pb2.RecordOutcomeRequest(
        outcomes=[outcome(MARKER_PROVIDER, model=MARKER_MODEL)]
    )
    with grpc.insecure_channel(address) as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        start = time.monotonic()
        next_marker = start + 0.5
        i = 0
        while (now := time.monotonic()) - start < seconds:
            stub.RecordOutcome(batches[i % len(batches)], timeout=5)
            i += 1
            if now >= next_marker:
                stub.RecordOutcome(marker, timeout=5)
                marker_times.append(time.time())
                next_marker += 0.1
            delay = start + i * tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def _watch(address: str, seen_times, done) -> None:
    """Poll the marker endpoint's attempt count; note the wall time of each increase."""
    request = router_pb2.GetModelEndpointsRequest(model=MARKER_MODEL)
    with grpc.insecure_channel(address) as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        last = 0
        while not done.value:
            reply = stub.GetModelEndpoints(request, timeout=5)
            count = next(
                (
                    e.uptime_last_1h.attempts
                    for e in reply.endpoints
                    if e.provider.name == MARKER_PROVIDER
                ),
                0,
            )
            now = time.time()
            for _ in range(count - last):
                seen_times.append(now)
            last = max(last, count)
            time.sleep(0.002)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_convergence(work: Path, rate: int, seconds: float) -> dict[str, float]:
    redis = RedisServer(work / f"redis-{rate}")
    redis.start()
    routers = [RouterProcess(work, f"conv{rate}-{i}", redis.url) for i in range(3)]
    try:
        for r in routers:
            r.start()
        for r in routers:
            r.wait_started()
        manager = multiprocessing.Manager()
        marker_times = manager.list()
        seen = [manager.list(), manager.list()]
        done = multiprocessing.Value("i", 0)
        watchers = [
            multiprocessing.Process(target=_watch, args=(r.grpc_address, s, done))
            for r, s in zip(routers[1:], seen, strict=True)
        ]
        for w in watchers:
            w.start()
        load = multiprocessing.Process(
            target=_load, args=(routers[0].grpc_address, rate, seconds, marker_times)
        )
        load.start()
        load.join()
        time.sleep(2.0)  # let the last markers arrive before the watchers stop
        done.value = 1
        for w in watchers:
            w.join(10)
        sent = list(marker_times)
        lags = []
        missing = 0
        for watched in seen:
            got = list(watched)
            missing += len(sent) - len(got)
            lags += [g - s for s, g in zip(sent, got, strict=False)]
        return {
            "rate": rate,
            "markers": len(sent),
            "samples": len(lags),
            "missing": missing,
            "p50_ms": _pct(lags, 0.5) * 1000,
            "p99_ms": _pct(lags, 0.99) * 1000,
            "max_ms": max(lags) * 1000,
        }
    finally:
        for r in routers:
            r.kill()
        redis.kill()


def _blast(address: str, seconds: float, result) -> None:
    batch = router_pb2.RecordOutcomeRequest(
        outcomes=[outcome(TRAFFIC_PROVIDERS[i % 5], ttft=200.0 + i) for i in range(500)]
    )
    with grpc.insecure_channel(address) as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        stub.RecordOutcome(batch, timeout=10)  # warm up
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < seconds:
            sent += stub.RecordOutcome(batch, timeout=10).accepted
        result.value = sent / (time.monotonic() - start)


def _ingest_once(router: RouterProcess, seconds: float) -> float:
    result = multiprocessing.Value("d", 0.0)
    proc = multiprocessing.Process(target=_blast, args=(router.grpc_address, seconds, result))
    proc.start()
    proc.join()
    return float(result.value)


def bench_ingestion(work: Path, rounds: int, seconds: float) -> dict[str, float]:
    redis = RedisServer(work / "redis-ingest")
    redis.start()
    plain = RouterProcess(work, "ingest-mem", None)
    shared = RouterProcess(work, "ingest-redis", redis.url)
    peer = RouterProcess(work, "ingest-peer", redis.url)  # a second replica applying it all
    try:
        for r in (plain, shared):
            r.start()
        for r in (plain, shared):
            r.wait_started()
        mem, red, red_peer = [], [], []
        for _ in range(rounds):
            mem.append(_ingest_once(plain, seconds))
            red.append(_ingest_once(shared, seconds))
        # With a peer on the same 2 cores: it applies every outcome too, so it
        # competes for the CPU the client and the router use.
        peer.start()
        peer.wait_started()
        for _ in range(rounds):
            red_peer.append(_ingest_once(shared, seconds))
        return {
            "memory": max(mem),
            "redis": max(red),
            "ratio": max(red) / max(mem),
            "redis_peer": max(red_peer),
            "ratio_peer": max(red_peer) / max(mem),
        }
    finally:
        for r in (plain, shared, peer):
            r.kill()
        redis.kill()


def fill_one_hour(redis: RedisServer, rate: int, hour_s: float = 3600.0) -> dict[str, float]:
    """Write what a fleet leaves after an hour at ``rate``: the checkpoint + 5 s of stream."""
    from router_common.catalog import catalog_version, load_catalog
    from router_common.domain import EndpointKey
    from router_service.core import RouterCore
    from router_service.model import Outcome
    from router_service.replication.codec import encode_outcomes
    from router_service.replication.config import ReplicationConfig
    from router_service.replication.replicator import RedisReplicator, fleet_health_rng

    started = time.monotonic()
    catalog = load_catalog(str(EXAMPLE_CATALOG))
    cfg = ReplicationConfig(url=redis.url)
    core = RouterCore(
        catalog, catalog_version(str(EXAMPLE_CATALOG)), time.time, health_rng=fleet_health_rng(cfg)
    )
    keys = sorted(catalog.endpoint_keys())
    rng = random.Random(5)
    now = time.time()
    total = int(rate * hour_s)
    chunk = 100_000
    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        outcomes = [
            Outcome(
                keys[(start + j) % len(keys)],
                now - hour_s + (start + j) / rate,
                True,
                ttft_ms=rng.lognormvariate(5.5, 0.5),
                tokens_per_second=rng.lognormvariate(4.5, 0.3),
            )
            for j in range(n)
        ]
        core.store.record_many(outcomes)
    for key in keys:
        core.health.record(Outcome(key, now, True, ttft_ms=300.0))
    replicator = RedisReplicator(cfg, core)
    doc = asyncio.run(replicator._checkpoint_doc())
    client = redis.client()
    client.set(f"{cfg.prefix}:checkpoint", doc)
    tail = rate * 5
    pipe = client.pipeline(transaction=False)
    for seq in range(tail // 25):
        batch = [
            Outcome(EndpointKey(MODEL, TRAFFIC_PROVIDERS[seq % 5]), now, True, ttft_ms=250.0)
            for _ in range(25)
        ]
        pipe.xadd(
            f"{cfg.prefix}:outcomes", {"r": "writer-x", "s": seq + 1, "o": encode_outcomes(batch)}
        )
    pipe.execute()
    return {
        "outcomes": total + tail,
        "checkpoint_bytes": len(doc),
        "fill_s": time.monotonic() - started,
    }


def _time_to_serving(router: RouterProcess) -> float:
    router.start()
    router.wait_started(timeout=120)
    elapsed = time.monotonic() - router.started_at
    router.kill()
    return elapsed


def bench_restart(work: Path, rate: int, rounds: int, hour_s: float) -> dict[str, float]:
    redis = RedisServer(work / "redis-restart")
    redis.start()
    try:
        filled = fill_one_hour(redis, rate, hour_s)
        plain = RouterProcess(work, "restart-mem", None)
        shared = RouterProcess(work, "restart-redis", redis.url)
        mem, red, loads = [], [], []
        for _ in range(rounds):
            mem.append(_time_to_serving(plain))
            shared.start()
            shared.wait_started(timeout=120)
            red.append(time.monotonic() - shared.started_at)
            loaded = [
                r for r in shared.records() if r.get("message") == "shared state loaded from redis"
            ]
            loads.append(loaded[-1]["seconds"])
            shared.kill()
        return {
            **filled,
            "serving_memory_s": min(mem),
            "serving_redis_s": min(red),
            "load_s": min(loads),
        }
    finally:
        redis.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument(
        "--only", choices=("convergence", "ingestion", "restart"), help="run one part"
    )
    args = parser.parse_args()
    seconds = 3.0 if args.quick else 15.0
    work = Path(tempfile.mkdtemp(prefix="bench-replication-"))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, work dir {work}\n")

    if args.only in (None, "convergence"):
        convergence(work, seconds)
    if args.only in (None, "ingestion"):
        ingestion(work, args.quick)
    if args.only in (None, "restart"):
        restart(work, args.quick)


def convergence(work: Path, seconds: float) -> None:
    print("## Convergence lag, 3 replicas, outcomes sent to one (ms)\n")
    print("| outcomes/s | markers | samples (B+C) | missing | p50 | p99 | max |")
    print("|---|---|---|---|---|---|---|")
    for rate in (1000, 5000):
        r = bench_convergence(work, rate, seconds)
        print(
            f"| {rate:,} | {r['markers']} | {r['samples']} | {r['missing']} "
            f"| {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['max_ms']:.0f} |",
            flush=True,
        )


def ingestion(work: Path, quick: bool) -> None:
    print("\n## Ingestion, RecordOutcome batches of 500, one router (outcomes/s, best of N)\n")
    r = bench_ingestion(work, rounds=2 if quick else 3, seconds=2.0 if quick else 5.0)
    print(
        "| in memory | with --redis | **ratio** | with --redis, a peer on the same cores | ratio |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| {r['memory']:,.0f} | {r['redis']:,.0f} | **{r['ratio']:.2f}×** "
        f"| {r['redis_peer']:,.0f} | {r['ratio_peer']:.2f}× |",
        flush=True,
    )


def restart(work: Path, quick: bool) -> None:
    print("\n## Time to SERVING after a restart, 1 h at 1,000 outcomes/s in Redis (s, best of N)\n")
    hour = 360.0 if quick else 3600.0
    r = bench_restart(work, 1000, rounds=2 if quick else 3, hour_s=hour)
    print(
        "| outcomes in the hour | checkpoint bytes | SERVING, no --redis "
        "| SERVING, --redis | of which loading |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| {r['outcomes']:,} | {r['checkpoint_bytes']:,} | {r['serving_memory_s']:.2f} "
        f"| {r['serving_redis_s']:.2f} | {r['load_s']:.2f} |"
    )


if __name__ == "__main__":
    main()
