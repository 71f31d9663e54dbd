"""Added latency of the sidecar vs. calling the fake provider directly and vs. a bare proxy.

Each server runs in its own process (its own event loop), like in production:
the fake provider, a bare aiohttp pass-through proxy (the baseline hop), a real
router, and the sidecar (ranking from the router, cached; outcomes reported in
the background). The client streams chat completions and measures TTFT (first
content token) and total time, against the three targets in short interleaved
rounds (10 requests, or 4 per stream), so drift hits all three alike and no
server sits idle for long between its rounds (an idle sidecar's first request
after its ranking expired for good would wait for the router).

    .venv/bin/python bench/bench_sidecar.py [--requests 400] [--concurrency 1 32]
    .venv/bin/python bench/bench_sidecar.py --relay-scan [--keys 8] [--per-block 4]

Not a timed test: the numbers depend on the machine. Results in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL = "bench/model"
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "benchmark prompt " * 8}],
    "max_tokens": 16,
    "stream": True,
}


# -- servers (each in a child process) -----------------------------------------------


def _serve(kind: str, arg: dict[str, Any], q: Any) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_async(kind, arg, q))


async def _serve_async(kind: str, arg: dict[str, Any], q: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if kind == "fake":
        from fake_provider import FakeProvider, FakeProviderConfig

        fp = FakeProvider(
            FakeProviderConfig(
                name="fake", ttft_median_ms=arg["ttft_ms"], tokens_per_second=arg["tps"], seed=1
            )
        )
        await fp.start()
        q.put(fp.base_url)
        await stop.wait()
        await fp.stop()
    elif kind == "proxy":
        runner = await start_bare_proxy(arg["upstream"])
        import gc

        gc.collect()
        gc.freeze()  # the same process tuning as the sidecar's, so the ratio is the code's
        q.put(f"http://127.0.0.1:{runner.addresses[0][1]}/v1")
        await stop.wait()
        await runner.cleanup()
    elif kind == "router":
        from router_service.app import RouterApp, Settings

        app = RouterApp(
            Settings(
                config_path=arg["catalog"],
                grpc_host="127.0.0.1",
                grpc_port=0,
                http_host="127.0.0.1",
                http_port=0,
                watch_catalog=False,
            )
        )
        await app.start()
        q.put(app.grpc_address)
        await stop.wait()
        await app.stop()
    elif kind == "sidecar":
        import logging

        from sidecar.app import SidecarApp
        from sidecar.cli import freeze_startup_heap
        from sidecar.config import SidecarSettings

        logging.getLogger().setLevel(logging.WARNING)
        sc = SidecarApp(
            SidecarSettings(
                router=arg["router"], listen="127.0.0.1:0", fallback_catalog=arg["catalog"]
            )
        )
        await sc.start()
        freeze_startup_heap()  # as router-sidecar does
        q.put(sc.base_url)
        await stop.wait()
        await sc.stop()


async def start_bare_proxy(upstream: str) -> web.AppRunner:
    """The baseline: the least a Python aiohttp hop can do (stream bytes through)."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with session.post(
            upstream + "/chat/completions", data=body, headers={"Content-Type": "application/json"}
        ) as up:
            resp = web.StreamResponse(
                status=up.status,
                headers={"Content-Type": up.headers.get("Content-Type", "text/event-stream")},
            )
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)

    async def close(_: web.Application) -> None:
        await session.close()

    app.on_cleanup.append(close)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


# -- client -------------------------------------------------------------------------------


async def one(session: aiohttp.ClientSession, base: str) -> tuple[float, float]:
    """(TTFT, total) in seconds for one streamed completion."""
    t0 = time.perf_counter()
    ttft = None
    async with session.post(base + "/chat/completions", json=BODY) as r:
        if r.status != 200:
            raise RuntimeError(f"{base}: HTTP {r.status}: {await r.text()}")
        async for line in r.content:
            if ttft is None and b'"content":"' in line and b'"content":""' not in line:
                ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (ttft if ttft is not None else total), total


async def run_round(
    session: aiohttp.ClientSession, base: str, n: int, conc: int, out: list[tuple[float, float]]
) -> None:
    sem = asyncio.Semaphore(conc)

    async def task() -> None:
        async with sem:
            out.append(await one(session, base))

    await asyncio.gather(*(task() for _ in range(n)))


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


async def measure(
    targets: dict[str, str], requests: int, conc: int, round_size: int | None
) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in targets}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for base in targets.values():  # warm-up: connections, caches, JIT-less imports
            await run_round(session, base, max(conc, 20), conc, [])
        per_round = round_size or max(10, 4 * conc)
        for _ in range(max(1, requests // per_round)):
            for name, base in targets.items():
                await run_round(session, base, per_round, conc, results[name])
    return results


def table(all_results: dict[int, dict[str, list[tuple[float, float]]]]) -> str:
    rows = [
        "| streams | target | TTFT p50 | TTFT p99 | total p50 | total p99 "
        "| added TTFT p50 | added total p50 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for conc, res in all_results.items():
        base_ttft = statistics.median(t for t, _ in res["direct"])
        base_total = statistics.median(t for _, t in res["direct"])
        for name, vals in res.items():
            ttft = [t for t, _ in vals]
            total = [t for _, t in vals]
            added_t = (statistics.median(ttft) - base_ttft) * 1000
            added_tot = (statistics.median(total) - base_total) * 1000
            rows.append(
                f"| {conc} | {name} | {statistics.median(ttft) * 1000:.2f} ms "
                f"| {pct(ttft, 0.99) * 1000:.2f} ms | {statistics.median(total) * 1000:.2f} ms "
                f"| {pct(total, 0.99) * 1000:.2f} ms "
                f"| {'-' if name == 'direct' else f'{added_t:+.3f} ms'} "
                f"| {'-' if name == 'direct' else f'{added_tot:+.3f} ms'} |"
            )
    return "\n".join(rows)


# -- the relay's per-block work, with and without the key check (issue 9) ------------


def _stream_blocks(chunks: int, per_block: int) -> list[bytes]:
    """A fake provider's stream as TCP reads: ``per_block`` SSE chunks per read."""
    head = b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
    lines = [
        head
        + b'"choices":[{"index":0,"delta":{"content":" word%d"},' % i
        + b'"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
        for i in range(chunks)
    ]
    lines.append(
        head + b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],'
        b'"usage":null}\n\n'
    )
    lines.append(head + b'"choices":[],"usage":{"completion_tokens":%d}}\n\n' % chunks)
    lines.append(b"data: [DONE]\n\n")
    return [b"".join(lines[i : i + per_block]) for i in range(0, len(lines), per_block)]


def relay_scan(keys: int, chunks: int, per_block: int, rounds: int, streams: int) -> str:
    """µs per relayed block for each variant, best of ``rounds`` interleaved rounds."""
    from sidecar.redaction import KeyRedactor
    from sidecar.streaming import SSEScanner

    blocks = _stream_blocks(chunks, per_block)
    redactor = KeyRedactor(f"sk-bench-{i:04d}-0123456789abcdefghijklmnop" for i in range(keys))
    mine = redactor.only("sk-bench-0000-0123456789abcdefghijklmnop")
    variants: dict[str, Any] = {
        "scan only (no rewrite, no key check)": lambda: SSEScanner(),
        "+ key check, the serving provider's key (as served)": lambda: SSEScanner(redactor=mine),
        f"+ key check, all {keys} keys": lambda: SSEScanner(redactor=redactor),
        "+ model rewrite": lambda: SSEScanner("creator/model"),
        "+ model rewrite + own-key check (as served)": lambda: SSEScanner(
            "creator/model", True, mine
        ),
    }
    best = {name: float("inf") for name in variants}
    for _ in range(rounds):
        for name, make in variants.items():
            t0 = time.perf_counter()
            for _ in range(streams):
                sc = make()
                for i, block in enumerate(blocks):
                    sc.feed(block, float(i))
                sc.final_chunks({"provider": "p"})
            elapsed = time.perf_counter() - t0
            best[name] = min(best[name], elapsed / (streams * len(blocks)) * 1e6)
    base = best["scan only (no rewrite, no key check)"]
    out = [
        f"{keys} keys, {chunks} chunks per stream, {per_block} chunks per read, "
        f"best of {rounds} interleaved rounds of {streams} streams",
        "",
        "| variant | µs per block | ratio |",
        "|---|---:|---:|",
    ]
    for name, us in best.items():
        out.append(f"| {name} | {us:.2f} | {us / base:.2f}× |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400, help="per target per concurrency")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--round-size", type=int, default=None, help="requests per target per round")
    ap.add_argument("--ttft-ms", type=float, default=20.0, help="fake provider TTFT")
    ap.add_argument("--tps", type=float, default=800.0, help="fake provider tokens/s")
    ap.add_argument("--no-router", action="store_true", help="sidecar on the catalog only")
    ap.add_argument(
        "--relay-scan",
        action="store_true",
        help="instead: the relay's per-block cost with and without the key check (in-process)",
    )
    ap.add_argument("--keys", type=int, default=8, help="--relay-scan: provider keys in use")
    ap.add_argument("--per-block", type=int, default=4, help="--relay-scan: chunks per read")
    args = ap.parse_args()
    if args.relay_scan:
        print(relay_scan(args.keys, 200, args.per_block, rounds=7, streams=300))
        return

    os.environ.setdefault("BENCH_FAKE_KEY", "bench-key")  # inherited by the sidecar
    ctx = mp.get_context("spawn")
    procs: list[Any] = []

    def spawn(kind: str, arg: dict[str, Any]) -> str:
        q = ctx.Queue()
        p = ctx.Process(target=_serve, args=(kind, arg, q), daemon=True)
        p.start()
        procs.append(p)
        return q.get(timeout=30)

    try:
        fake = spawn("fake", {"ttft_ms": args.ttft_ms, "tps": args.tps})
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(
                f"providers:\n  fake: {{base_url: '{fake}', api_key_env: BENCH_FAKE_KEY}}\n"
                f"models:\n  {MODEL}:\n    endpoints:\n"
                "      - {provider: fake, upstream_model: m, input_price_per_million: 1, "
                "output_price_per_million: 1}\n"
            )
            catalog = f.name
        proxy = spawn("proxy", {"upstream": fake})
        router = "" if args.no_router else spawn("router", {"catalog": catalog})
        sidecar = spawn("sidecar", {"router": router, "catalog": catalog})
        targets = {"direct": fake, "bare proxy": proxy, "sidecar": sidecar}
        all_results = {}
        for conc in args.concurrency:
            all_results[conc] = asyncio.run(measure(targets, args.requests, conc, args.round_size))
        print(
            f"fake provider: TTFT {args.ttft_ms} ms, {args.tps} tok/s, "
            f"{BODY['max_tokens']} tokens; {args.requests} requests per target per row; "
            f"router: {'none (catalog)' if args.no_router else 'real, ranking cached'}; "
            f"cpus: {os.cpu_count()}"
        )
        print(table(all_results))
    finally:
        for p in reversed(procs):  # sidecar first, so it does not see its router vanish
            p.terminate()
        for p in procs:
            p.join(5)


if __name__ == "__main__":
    main()
