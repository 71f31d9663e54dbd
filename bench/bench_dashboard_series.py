"""What the dashboard's history (router_service/dashboard_series.py) and the peer-aware
health rule cost on the outcome ingestion path (``RouterCore.record``: validation,
sketches, health, dashboard), as ratios against the same core with the dashboard
recording switched off, and with the peer comparison switched off too, measured in
interleaved rounds in one process (other work on the machine hits all alike).

    .venv/bin/python bench/bench_dashboard_series.py [--rounds 7] [--outcomes 50000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_router import _outcome_batches, populated_core

from router_common.pb import router_pb2


def _rate(core, messages) -> float:
    start = time.perf_counter()
    n = 0
    for outcomes in messages:
        n += core.record(outcomes).accepted
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--outcomes", type=int, default=50_000)
    parser.add_argument("--endpoints", type=int, default=8)
    args = parser.parse_args()
    per_batch = 500
    payload = _outcome_batches(args.outcomes // per_batch, per_batch, args.endpoints)
    messages = [router_pb2.RecordOutcomeRequest.FromString(b).outcomes for b in payload]
    full = populated_core(args.endpoints)
    no_series = populated_core(args.endpoints)
    no_series.series.record_many = lambda outcomes: None  # type: ignore[method-assign]
    bare = populated_core(args.endpoints)
    bare.series.record_many = lambda outcomes: None  # type: ignore[method-assign]
    bare.health._peer_slowdown = lambda key, now: 1.0  # type: ignore[method-assign]
    rates: dict[str, list[float]] = {"bare": [], "no_series": [], "full": []}
    for _ in range(args.rounds):
        for name, core in (("bare", bare), ("no_series", no_series), ("full", full)):
            rates[name].append(_rate(core, messages))
    best = {k: max(v) for k, v in rates.items()}
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        "| outcomes/round | endpoints | neither (best /s) | + peer health rule | "
        "+ dashboard series (all) | ratio all/neither (best, median) |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.outcomes:,} | {args.endpoints} | {best['bare']:,.0f} | "
        f"{best['no_series']:,.0f} ({best['no_series'] / best['bare']:.2f}) | "
        f"{best['full']:,.0f} ({best['full'] / best['no_series']:.2f}) | "
        f"{best['full'] / best['bare']:.2f}, {med['full'] / med['bare']:.2f} |"
    )


if __name__ == "__main__":
    main()
