"""The starvation benchmark's router serving its 32 rankers only, to profile where a call goes.

    .venv/bin/python bench/profile_ranking_only.py 40000 &
    .venv/bin/py-spy record --pid <the PID it prints> --duration 15 --rate 200 --format raw \
        --output /tmp/rank.raw --nonblocking -t

Why it exists: under the starvation load ranking's latency ratio follows the
loop share ingestion takes, *whatever* a RankProviders call costs, because the
32 callers are a closed loop and the router's one thread is their bottleneck
(bench/README.md section 7, ninth pass). Whether that holds rests on how much
of the loop one call takes and how much the callers' process spends per call;
this prints both (calls/s, the callers' CPU per second) and leaves the router
running under load long enough to be sampled.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import bench_router_load as load


async def main(calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        app = await load._router(directory, auth_tokens=str(load._tokens_file(directory)))
        await load._in_child(load._ranker, app.grpc_address, 1, 50, load.RANK_TOKEN, None)
        print("PID", os.getpid(), flush=True)
        began = time.perf_counter()
        latencies, ranker_cpu, _window = await load._in_child(
            load._ranker_cpu, app.grpc_address, 32, calls, load.RANK_TOKEN, None
        )
        elapsed = time.perf_counter() - began
        rate = len(latencies) / elapsed
        print(
            f"{len(latencies)} calls in {elapsed:.1f} s: {rate:,.0f}/s; "
            f"p50 {load._pct(latencies, 0.5):.1f} ms, p99 {load._pct(latencies, 0.99):.1f} ms; "
            f"the callers' process used {ranker_cpu:.2f} of a core "
            f"({ranker_cpu / rate * 1e6:,.0f} µs of CPU per call)",
            flush=True,
        )
        await app.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("calls", type=int, nargs="?", default=40_000)
    asyncio.run(main(parser.parse_args().calls))
