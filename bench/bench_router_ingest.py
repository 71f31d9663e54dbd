"""In-process cost of applying one outcome: ``RouterCore.record`` on 500-outcome batches.

    .venv/bin/python bench/bench_router_ingest.py [--rounds 5] [--slice 64] [--profile | --parts]

Why a separate figure from ``bench_router.py --scenario starvation``: the
starvation run measures the loop time per outcome inside the server, mixed
with ranking and gRPC, and moves with the machine's moment; this one isolates
the router's own per-outcome work (validation, stats store, dashboard series,
health) on the batches the starvation writers send (8 endpoints, 500 outcomes,
``started_at`` unset), applied in slices as ``Ingestor`` applies them, with
the startup heap frozen as ``router-service`` does. Two figures: on protobuf
messages already parsed (what ``record`` itself costs) and on messages freshly
parsed per batch (what the server pays: the parse, and a first read of every
field of a new message). Best of ``--rounds``: the minimum is the cost of the
code, the rest is other tenants of this shared machine.

Runs against any checkout of the router (only ``RouterCore`` public API), so a
before/after pair is this same file with ``PYTHONPATH`` pointing at each tree.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import math
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_router import populated_core
from bench_router_load import _batches

from router_common.pb import router_pb2


def _recorder(core):
    """What ``Ingestor`` applies slices with: ``GroupedRecorder`` where the checkout
    has it, else ``RouterCore.record`` (the code before it)."""
    try:
        from router_service.ingest import GroupedRecorder
    except ImportError:
        return core
    return GroupedRecorder(core)


def _apply(recorder, outcomes, size: int) -> int:
    accepted = 0
    for start in range(0, len(outcomes), size):
        accepted += recorder.record(outcomes[start : start + size], start).accepted
    return accepted


def measure(rounds: int, size: int, batches: int = 40) -> dict[str, float]:
    """µs per outcome, best of ``rounds`` passes over ``batches`` batches of 500."""
    core = populated_core(8)
    recorder = _recorder(core)
    payload = _batches(500, batches)
    parsed = [router_pb2.RecordOutcomeRequest.FromString(b).outcomes for b in payload]
    for outcomes in parsed[:4]:  # warm every path (first outcome of an endpoint, etc.)
        _apply(recorder, outcomes, size)
    gc.collect()
    gc.freeze()
    n = 500 * batches
    best_parsed = best_fresh = best_refreshed = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for outcomes in parsed:
            _apply(recorder, outcomes, size)
        best_parsed = min(best_parsed, (time.perf_counter() - start) / n * 1e6)
        core.refresh()
        start = time.perf_counter()
        for data in payload:
            _apply(recorder, router_pb2.RecordOutcomeRequest.FromString(data).outcomes, size)
        best_fresh = min(best_fresh, (time.perf_counter() - start) / n * 1e6)
        core.refresh()
        # As the server runs: the refresh loop's steps every 0.1 s, i.e. every
        # 3,000 outcomes at 30k/s (6 batches), timed with the outcomes.
        start = time.perf_counter()
        for i, data in enumerate(payload):
            _apply(recorder, router_pb2.RecordOutcomeRequest.FromString(data).outcomes, size)
            if i % 6 == 5:
                for _ in core.refresh_steps():
                    pass
        best_refreshed = min(best_refreshed, (time.perf_counter() - start) / n * 1e6)
        core.refresh()
    return {"parsed_us": best_parsed, "fresh_us": best_fresh, "refreshed_us": best_refreshed}


def parts(rounds: int, size: int, batches: int = 40) -> dict[str, float]:
    """µs per outcome of each step of ``GroupedRecorder.record`` (this branch's code
    only), best of ``rounds``: validation, stats store, dashboard series, health."""
    from router_common.limits import MAX_REJECTIONS_REPORTED
    from router_service.outcome_validation import BatchValidator

    core = populated_core(8)
    payload = _batches(500, batches)
    parsed = [router_pb2.RecordOutcomeRequest.FromString(b).outcomes for b in payload]
    slices = [o[s : s + size] for o in parsed for s in range(0, 500, size)]
    validator = BatchValidator(core.known_endpoints)
    store, series, health = core.store, core.series, core.health
    gc.collect()
    gc.freeze()
    best: dict[str, float] = {}
    clock = time.perf_counter
    for _ in range(rounds):
        spent = dict.fromkeys(("validation", "store", "series", "health"), 0.0)
        for part in slices:
            a = clock()
            accepted, by_endpoint, _ = validator.validate(
                part, core.clock(), 0, [], MAX_REJECTIONS_REPORTED
            )
            b = clock()
            baselines = {k: store.stats(k).ttft_1h.get(0.5) for k in by_endpoint}
            store.record_grouped(by_endpoint)  # type: ignore[attr-defined]
            c = clock()
            series.record_grouped(by_endpoint)
            d = clock()
            health.record_many(accepted, baselines)
            e = clock()
            spent["validation"] += b - a
            spent["store"] += c - b
            spent["series"] += d - c
            spent["health"] += e - d
        core.refresh()
        for name, seconds in spent.items():
            best[name] = min(best.get(name, math.inf), seconds / (500 * batches) * 1e6)
    return best


def profile(size: int, batches: int = 40) -> None:
    core = populated_core(8)
    recorder = _recorder(core)
    payload = _batches(500, batches)
    gc.collect()
    gc.freeze()
    profiler = cProfile.Profile()
    profiler.enable()
    for data in payload:
        _apply(recorder, router_pb2.RecordOutcomeRequest.FromString(data).outcomes, size)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slice", type=int, default=64, help="outcomes per record() call")
    parser.add_argument("--profile", action="store_true", help="cProfile one pass instead")
    parser.add_argument(
        "--parts", action="store_true", help="time each step of GroupedRecorder instead"
    )
    args = parser.parse_args()
    if args.profile:
        profile(args.slice)
        return
    if args.parts:
        split = parts(args.rounds, args.slice)
        shown = ", ".join(f"{name} {us:.2f}" for name, us in split.items())
        print(f"µs per outcome, best of {args.rounds}: {shown}; sum {sum(split.values()):.2f}")
        return
    r = measure(args.rounds, args.slice)
    print(
        f"RouterCore.record, 500-outcome batches in slices of {args.slice}, best of "
        f"{args.rounds}: {r['parsed_us']:.2f} µs per outcome on parsed messages, "
        f"{r['fresh_us']:.2f} µs freshly parsed, {r['refreshed_us']:.2f} µs freshly parsed "
        "with the refresh steps every 3,000 outcomes"
    )


if __name__ == "__main__":
    main()
