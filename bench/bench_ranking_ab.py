"""A/B the in-process cost of rank() between two checkouts, interleaved in one run.

    git worktree add /tmp/before <commit>
    .venv/bin/python bench/bench_ranking_ab.py /tmp/before .

A refactor of the ranking must not make it slower, and on these shared,
noisy machines two runs minutes apart differ by more than the change being
judged. So each checkout's own ``bench/bench_router.py`` ``bench_in_process``
runs in a fresh interpreter (its own code on ``sys.path``), the two alternate
for ``--rounds`` rounds, and each figure is the best of its rounds (as timeit
advises: the minimum is the code, the rest is the neighbours). The table gives
both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

_CHILD = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/bench"]
import bench_router
out = {}
for endpoints in (8, 50):
    for label, micros in bench_router.bench_in_process(endpoints, int(sys.argv[2])).items():
        out[f"{endpoints} | {label}"] = micros
print(json.dumps(out))
"""


def measure(tree: Path, calls: int) -> dict[str, float]:
    """µs per rank() call for each (endpoints, strategy), from ``tree``'s own code."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tree), str(calls)],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="checkout A (the baseline)")
    parser.add_argument("after", type=Path, help="checkout B (the change)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    best: dict[str, dict[str, float]] = {"before": {}, "after": {}}
    for _ in range(args.rounds):
        for side, tree in (("before", args.before), ("after", args.after)):
            for label, micros in measure(tree.resolve(), args.calls).items():
                best[side][label] = min(micros, best[side].get(label, micros))
    print("| endpoints | strategy | before µs/call | after µs/call | **after / before** |")
    print("|---|---|---|---|---|")
    for label, before in best["before"].items():
        after = best["after"][label]
        print(f"| {label} | {before:.1f} | {after:.1f} | **{after / before:.2f}×** |")


if __name__ == "__main__":
    main()
