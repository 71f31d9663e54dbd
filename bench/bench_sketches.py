"""Benchmark the sketch layer against exact numpy, fastdigest and ddsketch on the same data.

Run: ``.venv/bin/python bench/bench_sketches.py [--n 1000000] [--repeats 3]``

Prints markdown tables. Timings are the best of ``--repeats`` runs (the machine
is noisy); compare the ratio columns, which are measured in the same run.
Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastdigest
from ddsketch import DDSketch
from ddsketch.pb.proto import DDSketchProto

from router_common.domain import EndpointKey
from router_service.model import Outcome
from router_service.sketches.store import InMemoryStatsStore
from router_service.sketches.tdigest import TDigest

QS = (0.5, 0.9, 0.95, 0.99, 0.999)
SINGLE_N = 200_000


def best_of(repeats: int, fn: Callable[[], Any]) -> float:
    """Fastest of ``repeats`` runs, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def rank_error(sorted_values: np.ndarray, estimate: float, q: float) -> float:
    """|F(estimate) - q| with F the empirical CDF; 0 if estimate's tie range covers q."""
    n = sorted_values.size
    lo = np.searchsorted(sorted_values, estimate, side="left") / n
    hi = np.searchsorted(sorted_values, estimate, side="right") / n
    return 0.0 if lo <= q <= hi else min(abs(lo - q), abs(hi - q))


class Impl:
    """Uniform face over each sketch for the benchmark."""

    name = ""

    def new(self) -> Any: ...
    def batch(self, s: Any, x: np.ndarray) -> None: ...
    def single(self, s: Any, xs: list[float]) -> None: ...
    def quantile(self, s: Any, q: float) -> float:
        raise NotImplementedError

    def nbytes(self, s: Any) -> int:
        raise NotImplementedError

    def merge(self, parts: list[Any]) -> Any: ...


class Ours(Impl):
    name = "ours TDigest(100)"

    def new(self) -> TDigest:
        return TDigest(100)

    def batch(self, s: TDigest, x: np.ndarray) -> None:
        s.add_batch(x)
        s.centroid_count  # noqa: B018  (force the buffered merge into the timing)

    def single(self, s: TDigest, xs: list[float]) -> None:
        add = s.add
        for v in xs:
            add(v)
        s.centroid_count  # noqa: B018

    def quantile(self, s: TDigest, q: float) -> float:
        v = s.quantile(q)
        assert v is not None
        return v

    def nbytes(self, s: TDigest) -> int:
        return len(s.to_bytes())

    def merge(self, parts: list[TDigest]) -> TDigest:
        return TDigest.merged(parts)


class Fast(Impl):
    def __init__(self, centroids: int) -> None:
        self.centroids = centroids
        self.name = f"fastdigest({centroids})"

    def new(self) -> Any:
        return fastdigest.TDigest(self.centroids)

    def batch(self, s: Any, x: np.ndarray) -> None:
        s.batch_update(x)

    def single(self, s: Any, xs: list[float]) -> None:
        update = s.update
        for v in xs:
            update(v)

    def quantile(self, s: Any, q: float) -> float:
        return float(s.quantile(q))

    def nbytes(self, s: Any) -> int:
        return len(s.to_bytes())

    def merge(self, parts: list[Any]) -> Any:
        out = parts[0].copy()
        for p in parts[1:]:
            out.merge_inplace(p)
        return out


class DD(Impl):
    name = "ddsketch(1%)"

    def new(self) -> DDSketch:
        return DDSketch(relative_accuracy=0.01)

    def batch(self, s: DDSketch, x: np.ndarray) -> None:  # no batch API: a loop
        self.single(s, x.tolist())

    def single(self, s: DDSketch, xs: list[float]) -> None:
        add = s.add
        for v in xs:
            add(v)

    def quantile(self, s: DDSketch, q: float) -> float:
        v = s.get_quantile_value(q)
        assert v is not None
        return float(v)

    def nbytes(self, s: DDSketch) -> int:
        return len(DDSketchProto.to_proto(s).SerializeToString())

    def merge(self, parts: list[DDSketch]) -> DDSketch:
        out = DDSketch(relative_accuracy=0.01)
        for p in parts:
            out.merge(p)
        return out


def measure(impl: Impl, x: np.ndarray, repeats: int) -> dict[str, Any]:
    holder: dict[str, Any] = {}

    def run_batch() -> None:
        holder["s"] = s = impl.new()
        impl.batch(s, x)

    batch_s = best_of(repeats if not isinstance(impl, DD) else 1, run_batch)
    sketch = holder["s"]
    xs = x[:SINGLE_N].tolist()
    single_s = best_of(repeats, lambda: impl.single(impl.new(), xs))
    sorted_x = np.sort(x)
    errors = [rank_error(sorted_x, impl.quantile(sketch, q), q) for q in QS]
    parts = []
    for i in range(12):
        p = impl.new()
        impl.batch(p, x[i::12][:100_000])
        parts.append(p)
    merge_s = best_of(repeats, lambda: impl.merge(parts))
    impl.quantile(sketch, 0.95)
    reads = 2000
    read_s = best_of(repeats, lambda: [impl.quantile(sketch, 0.95) for _ in range(reads)]) / reads
    return {
        "batch_ns": batch_s / x.size * 1e9,
        "single_ns": single_s / len(xs) * 1e9,
        "errors": errors,
        "bytes": impl.nbytes(sketch),
        "merge_us": merge_s * 1e6,
        "quantile_us": read_s * 1e6,
    }


def numpy_row(x: np.ndarray, repeats: int) -> dict[str, Any]:
    batch_s = best_of(repeats, lambda: np.quantile(x, QS))
    return {"batch_ns": batch_s / x.size * 1e9, "bytes": x.nbytes}


def cached_store_read(repeats: int) -> float:
    """Time of ``store.stats(key).ttft_1h.get(0.95)``: what ranking pays per endpoint."""
    now = 1_700_000_000.0
    store = InMemoryStatsStore(clock=lambda: now)
    key = EndpointKey("zai/glm-4.7", "cerebras")
    rng = np.random.default_rng(5)
    store.record_many(
        Outcome(key, now - i * 0.3, True, ttft_ms=float(v), tokens_per_second=80.0)
        for i, v in enumerate(rng.lognormal(5, 1, 10_000))
    )
    store.refresh()
    reads = 100_000

    def read() -> None:
        stats = store.stats
        for _ in range(reads):
            stats(key).ttft_1h.get(0.95)

    return best_of(repeats, read) / reads * 1e6


def fmt_err(e: float) -> str:
    return "0" if e == 0 else f"{e:.1e}"


def table(title: str, x: np.ndarray, impls: list[Impl], repeats: int) -> tuple[str, dict]:
    rows = {impl.name: measure(impl, x, repeats) for impl in impls}
    base = rows["fastdigest(100)"]
    out = [
        f"### {title} (n = {x.size:,})",
        "",
        "| sketch | batch ns/value | vs fd100 | one-at-a-time ns/value | vs fd100 | "
        + " | ".join(f"rank err q={q}" for q in QS)
        + " | bytes | merge 12 (µs) | quantile() (µs) |",
        "|---" * (8 + len(QS)) + "|",
    ]
    for name, r in rows.items():
        out.append(
            f"| {name} | {r['batch_ns']:.1f} | {r['batch_ns'] / base['batch_ns']:.2f}x"
            f" | {r['single_ns']:.0f} | {r['single_ns'] / base['single_ns']:.2f}x | "
            + " | ".join(fmt_err(e) for e in r["errors"])
            + f" | {r['bytes']:,} | {r['merge_us']:.0f} | {r['quantile_us']:.2f} |"
        )
    np_row = numpy_row(x, repeats)
    out.append(
        f"| numpy exact (np.quantile, 5 qs) | {np_row['batch_ns']:.1f}"
        f" | {np_row['batch_ns'] / base['batch_ns']:.2f}x | - | - | "
        + " | ".join("0" for _ in QS)
        + f" | {np_row['bytes']:,} | - | - |"
    )
    return "\n".join(out), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(42)
    data = {
        "lognormal(5, 1)": rng.lognormal(5.0, 1.0, args.n),
        "Pareto(1.5)": rng.pareto(1.5, args.n) + 1.0,
    }
    impls: list[Impl] = [Ours(), Fast(100), Fast(200), DD()]
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    print()
    for title, x in data.items():
        text, _ = table(title, x, impls, args.repeats)
        print(text)
        print()
    read_us = cached_store_read(args.repeats)
    print(f"Cached quantile read, `store.stats(key).ttft_1h.get(0.95)`: {read_us * 1000:.0f} ns")


if __name__ == "__main__":
    main()
