"""Added latency of the sidecar vs. calling the fake provider directly and vs. a bare proxy.

Each server runs in its own process (its own event loop), like in production:
the fake provider, a bare aiohttp pass-through proxy (the baseline hop), nginx
as a reference hop when it is installed (Debian's ``nginx``; skipped with a note
otherwise), a real router, and the sidecar (ranking from the router, cached;
outcomes reported in the background; JSON logs at ``--log-level``, INFO by
default as k8s/example-app.yaml deploys, written to a file). The client streams
chat completions and measures TTFT (first content token) and total time, against
every target in short interleaved rounds (10 requests, or 4 per stream), so drift
hits all alike and no server sits idle for long between its rounds (an idle
sidecar's first request after its ranking expired for good would wait for the
router).

CPU per request: each server process's CPU time (user + system, all threads,
from /proc/<pid>/stat) over the whole measured phase of one concurrency level,
divided by the requests it served. The router's is counted against the
sidecar's requests (it serves nothing else). ``--compare-sidecar DIR`` adds a
second sidecar run from another checkout (e.g. main, unpacked with
``git archive``), with its own router, as one more interleaved target.

    .venv/bin/python bench/bench_sidecar.py [--requests 400] [--concurrency 1 32] \
        [--tps 0] [--runs 3] [--log-level info] [--compare-sidecar /tmp/main]
    .venv/bin/python bench/bench_sidecar.py --relay-scan [--keys 8] [--per-block 4]
    .venv/bin/python bench/bench_sidecar.py --one-read-scan [--ttft-ms 20]

Not a timed test: the numbers depend on the machine. Results in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
    if arg.get("root"):  # another checkout's code (--compare-sidecar)
        sys.path.insert(0, arg["root"])
    factory = None
    if arg.get("loop") == "uvloop":  # --uvloop (not a dependency: imported by name)
        factory = importlib.import_module("uvloop").new_event_loop
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve_async(kind, arg, q))


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
        from router_common.logs import configure_logging
        from sidecar.app import SidecarApp
        from sidecar.cli import freeze_startup_heap
        from sidecar.config import SidecarSettings

        # As router-sidecar does (JSON lines), to a file rather than the terminal.
        log_file = open(arg["log_file"], "a")  # noqa: SIM115 (open for the process's life)
        configure_logging(arg["log_level"], log_file)
        sc = SidecarApp(
            SidecarSettings(
                router=arg["router"], listen="127.0.0.1:0", fallback_catalog=arg["catalog"]
            )
        )
        await sc.start()
        freeze_startup_heap()  # as router-sidecar does
        profiler = None
        if arg.get("cprofile"):  # call counts per request (slows the sidecar: not for figures)
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        q.put(sc.base_url)
        await stop.wait()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(arg["cprofile"])
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

    return await serve_hop(handle, session)


def process_spawner(
    target: Callable[[str, dict[str, Any], Any], None], procs: list[Any]
) -> Callable[[str, dict[str, Any]], tuple[str, int]]:
    """``spawn(kind, arg)``: ``target`` in a fresh process (appended to ``procs``); the
    address it puts on its queue, and its pid."""
    ctx = mp.get_context("spawn")

    def spawn(kind: str, arg: dict[str, Any]) -> tuple[str, int]:
        q = ctx.Queue()
        p = ctx.Process(target=target, args=(kind, arg, q), daemon=True)
        p.start()
        procs.append(p)
        assert p.pid is not None
        return q.get(timeout=30), p.pid

    return spawn


async def serve_hop(handle: Any, session: aiohttp.ClientSession) -> web.AppRunner:
    """``handle`` on the chat path, on a free loopback port; ``session`` closes with it."""
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


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of these processes (every thread) in seconds.

    The scheduler's nanosecond counter per thread (/proc/<pid>/task/*/schedstat)
    rather than /proc/<pid>/stat's 10 ms ticks, so a few hundred requests suffice.
    """
    ns = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that just exited
                ns += int((task / "schedstat").read_text().split()[0])
    return ns / 1e9


async def measure(
    targets: dict[str, str],
    requests: int,
    conc: int,
    round_size: int | None,
    cpu_pids: dict[str, list[int]],
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, float]]:
    """Latencies per target, and CPU seconds per process group over the measured phase."""
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in targets}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for base in targets.values():  # warm-up: connections, caches, JIT-less imports
            await run_round(session, base, max(conc, 20), conc, [])
        per_round = round_size or max(10, 4 * conc)
        cpu0 = {name: cpu_seconds(pids) for name, pids in cpu_pids.items()}
        for _ in range(max(1, requests // per_round)):
            for name, base in targets.items():
                await run_round(session, base, per_round, conc, results[name])
        cpu = {name: cpu_seconds(pids) - cpu0[name] for name, pids in cpu_pids.items()}
    return results, cpu


#: Which process groups' CPU a target's requests cost (the router serves only sidecars).
CPU_OF = {
    "bare proxy": ("bare proxy",),
    "bare proxy (uvloop)": ("bare proxy (uvloop)",),
    "nginx": ("nginx",),
    "sidecar": ("sidecar", "router"),
    "sidecar (compared)": ("sidecar (compared)", "router (compared)"),
}


def summarise(
    res: dict[str, list[tuple[float, float]]], cpu: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Per target: TTFT/total percentiles, added TTFT p50, CPU ms per request."""
    base_ttft = statistics.median(t for t, _ in res["direct"])
    base_total = statistics.median(t for _, t in res["direct"])
    out: dict[str, dict[str, float]] = {}
    for name, vals in res.items():
        ttft = [t for t, _ in vals]
        total = [t for _, t in vals]
        row = {
            "ttft_p50": statistics.median(ttft) * 1000,
            "ttft_p99": pct(ttft, 0.99) * 1000,
            "total_p50": statistics.median(total) * 1000,
            "total_p99": pct(total, 0.99) * 1000,
            "added_ttft": (statistics.median(ttft) - base_ttft) * 1000,
            "added_total": (statistics.median(total) - base_total) * 1000,
        }
        groups = CPU_OF.get(name, ())
        if groups:
            row["cpu_hop"] = cpu[groups[0]] / len(vals) * 1000
            row["cpu_router"] = cpu[groups[1]] / len(vals) * 1000 if len(groups) > 1 else 0.0
        out[name] = row
    return out


def _ms(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.3f} ms" if signed else f"{v:.3f} ms"


def table(runs: list[dict[int, dict[str, dict[str, float]]]]) -> str:
    """One row per run, concurrency and target; ratios against the same run's bare proxy."""
    rows = [
        "| run | streams | target | TTFT p50 | TTFT p99 | total p50 | added TTFT p50 "
        "| ÷ bare | CPU/request (hop) | router CPU/request | hop CPU ÷ bare |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, run in enumerate(runs, 1):
        for conc, summary in run.items():
            bare = summary["bare proxy"]
            for name, r in summary.items():
                direct = name == "direct"
                added = None if direct else r["added_ttft"]
                ratio = "-" if direct else f"{r['added_ttft'] / bare['added_ttft']:.2f}×"
                cpu = r.get("cpu_hop")
                cpu_ratio = "-" if cpu is None else f"{cpu / bare['cpu_hop']:.2f}×"
                router = r.get("cpu_router") if name.startswith("sidecar") else None
                rows.append(
                    f"| {i} | {conc} | {name} | {r['ttft_p50']:.2f} ms | {r['ttft_p99']:.2f} ms "
                    f"| {r['total_p50']:.2f} ms | {_ms(added, True)} | {ratio} "
                    f"| {_ms(cpu)} | {_ms(router)} | {cpu_ratio} |"
                )
    return "\n".join(rows)


def ranges(runs: list[dict[int, dict[str, dict[str, float]]]], bare_name: str) -> str:
    """Across runs: min to max of each target's ratios to the bare proxy ``bare_name``."""
    rows = [
        f"ratios to {bare_name} of the same run",
        "",
        "| streams | target | added TTFT p50 ÷ bare | hop CPU ÷ bare | (hop + router) CPU ÷ bare |",
        "|---:|---|---:|---:|---:|",
    ]
    for conc in runs[0]:
        for name in runs[0][conc]:
            if name in ("direct", bare_name):
                continue
            lat, hop, both = [], [], []
            for run in runs:
                r, bare = run[conc][name], run[conc][bare_name]
                lat.append(r["added_ttft"] / bare["added_ttft"])
                hop.append(r["cpu_hop"] / bare["cpu_hop"])
                both.append((r["cpu_hop"] + r["cpu_router"]) / bare["cpu_hop"])
            rows.append(f"| {conc} | {name} | {_span(lat)} | {_span(hop)} | {_span(both)} |")
    return "\n".join(rows)


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    med = statistics.median(values)
    return (
        f"{lo:.2f}× (median {med:.2f}×)" if lo == hi else f"{lo:.2f}–{hi:.2f}× (median {med:.2f}×)"
    )


# -- nginx, the reference hop ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_nginx(upstream: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    """nginx as a streaming pass-through (one worker, upstream keep-alive, no buffering)."""
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        return None
    host_port = upstream.split("//", 1)[1].split("/", 1)[0]
    port = _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    temp = "".join(
        f"  {kind}_temp_path {workdir}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf.write_text(
        "worker_processes 1;\ndaemon off;\nmaster_process on;\n"
        f"pid {workdir}/nginx.pid;\nerror_log {workdir}/error.log warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n  access_log off;\n"
        + temp
        + f"  upstream fake {{ server {host_port}; keepalive 256; }}\n"
        f"  server {{\n    listen 127.0.0.1:{port};\n"
        "    location /v1/ {\n      proxy_pass http://fake/v1/;\n"
        '      proxy_http_version 1.1;\n      proxy_set_header Connection "";\n'
        "      proxy_buffering off;\n      proxy_request_buffering off;\n    }\n  }\n}\n"
    )
    proc = subprocess.Popen(
        [binary, "-p", str(workdir), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc, f"http://127.0.0.1:{port}/v1"
        if proc.poll() is not None:
            return None
        time.sleep(0.05)
    proc.terminate()
    return None


def process_tree(pid: int) -> list[int]:
    """A process and its children (nginx's master and worker)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        pids.extend(int(c) for c in children)
    return pids


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


async def _one_read_answer(ttft_ms: float) -> bytes:
    """The fake provider's unpaced answer, as the sidecar asks for it (include_usage)."""
    from fake_provider import FakeProvider, FakeProviderConfig

    fp = FakeProvider(
        FakeProviderConfig(name="fake", ttft_median_ms=ttft_ms, tokens_per_second=0, seed=1)
    )
    await fp.start()
    body = {**BODY, "model": "m", "stream_options": {"include_usage": True}}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(fp.base_url + "/chat/completions", json=body) as resp,
        ):
            return await resp.read()
    finally:
        await fp.stop()


def one_read_scan(ttft_ms: float) -> str:
    """µs per answer for the scan of the bench's exact upstream bytes, in one read.

    The fake provider's answer at ``--tps 0`` (role and first token, 15 deltas, a
    finish, a usage chunk, [DONE]: ~3.6 KB) as the sidecar relays it: ``feed``
    (scan, model rewrite, key check), then what the end of the stream asks
    (``first_read_done``, the counts, ``final_chunks`` with a ``routing`` object);
    and the key check alone on the forwarded block for the bench's key and for
    keys shaped like real providers' (random, seeded). Best of many short repeats
    (the machine is shared: the minimum is the code's cost).
    """
    import random
    import string

    from sidecar.redaction import KeyRedactor
    from sidecar.streaming import SSEScanner

    data = asyncio.run(_one_read_answer(ttft_ms))
    key = os.environ.get("BENCH_FAKE_KEY", "bench-key")
    mine = KeyRedactor([key]).only(key)
    routing = {"provider": "fake", "attempts": [{"provider": "fake", "status": "ok"}]}
    out = SSEScanner(MODEL, True, None).feed(data, 1.0)
    inner = 50

    def best(fn: Any) -> float:
        low = float("inf")
        for _ in range(300):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            low = min(low, time.perf_counter() - t0)
        return low / inner * 1e6

    def feed() -> None:
        SSEScanner(MODEL, True, mine).feed(data, 1.0)

    def stream() -> None:
        sc = SSEScanner(MODEL, False, mine)
        sc.feed(data, 1.0)
        sc.first_read_done()
        _ = (sc.output_tokens, sc.generation_seen)
        sc.final_chunks(dict(routing))

    rows = [
        f"answer {len(data)} B in one read, forwarded {len(out)} B; best of 300 × {inner}",
        "",
        "| what | µs |",
        "|---|---:|",
        f"| `feed` (scan, model rewrite, key check) | {best(feed):.2f} |",
        f"| the stream as served (`feed`, counts, `final_chunks`) | {best(stream):.2f} |",
    ]
    rnd = random.Random(13)
    url = string.ascii_letters + string.digits + "_-"

    def rand(alphabet: str, n: int) -> str:
        return "".join(rnd.choice(alphabet) for _ in range(n))

    shapes = {
        f"the bench's key ({len(key)} chars)": key,
        "OpenRouter-shaped (73)": "sk-or-v1-" + rand("0123456789abcdef", 64),
        "Anthropic-shaped (108)": "sk-ant-api03-" + rand(url, 93) + "AA",
        "Groq-shaped (56)": "gsk_" + rand(string.ascii_letters + string.digits, 52),
        "OpenAI-project-shaped (164)": "sk-proj-" + rand(url, 156),
    }
    for name, k in shapes.items():
        red = KeyRedactor([k]).only(k)
        us = best(lambda red=red: red.scrub(out))
        rows.append(f"| key check of the forwarded block, {name} | {us:.2f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400, help="per target per concurrency")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--round-size", type=int, default=None, help="requests per target per round")
    ap.add_argument("--runs", type=int, default=1, help="repeat the whole measurement")
    ap.add_argument("--ttft-ms", type=float, default=20.0, help="fake provider TTFT")
    ap.add_argument("--tps", type=float, default=800.0, help="fake provider tokens/s (0: unpaced)")
    ap.add_argument("--log-level", default="info", help="the sidecar's (INFO is the deployed one)")
    ap.add_argument("--no-router", action="store_true", help="sidecar on the catalog only")
    ap.add_argument("--no-nginx", action="store_true", help="leave nginx out even if installed")
    ap.add_argument(
        "--compare-sidecar",
        metavar="DIR",
        help="also run the sidecar (and its router) from this checkout, e.g. main's",
    )
    ap.add_argument(
        "--uvloop",
        action="store_true",
        help="run this branch's sidecar on uvloop (pip install uvloop; not a dependency), "
        "and add the bare hop on uvloop as a second baseline (ratios to both)",
    )
    ap.add_argument("--cprofile", metavar="FILE", help="cProfile the sidecar, stats to FILE")
    ap.add_argument(
        "--relay-scan",
        action="store_true",
        help="instead: the relay's per-block cost with and without the key check (in-process)",
    )
    ap.add_argument(
        "--one-read-scan",
        action="store_true",
        help="instead: the scan of the fake's whole answer in one read, and the key check "
        "for keys of real providers' shapes (in-process)",
    )
    ap.add_argument("--keys", type=int, default=8, help="--relay-scan: provider keys in use")
    ap.add_argument("--per-block", type=int, default=4, help="--relay-scan: chunks per read")
    args = ap.parse_args()
    args.sidecar_loop = "uvloop" if args.uvloop else "asyncio"
    if args.relay_scan:
        print(relay_scan(args.keys, 200, args.per_block, rounds=7, streams=300))
        return
    if args.one_read_scan:
        print(one_read_scan(args.ttft_ms))
        return

    os.environ.setdefault("BENCH_FAKE_KEY", "bench-key")  # inherited by the sidecar
    procs: list[Any] = []
    work = Path(tempfile.mkdtemp(prefix="bench_sidecar_"))
    nginx: subprocess.Popen[bytes] | None = None
    notes: list[str] = []
    spawn = process_spawner(_serve, procs)

    try:
        fake, _ = spawn("fake", {"ttft_ms": args.ttft_ms, "tps": args.tps})
        catalog = str(work / "catalog.yaml")
        Path(catalog).write_text(
            f"providers:\n  fake: {{base_url: '{fake}', api_key_env: BENCH_FAKE_KEY}}\n"
            f"models:\n  {MODEL}:\n    endpoints:\n"
            "      - {provider: fake, upstream_model: m, input_price_per_million: 1, "
            "output_price_per_million: 1}\n"
        )
        targets = {"direct": fake}
        cpu_pids: dict[str, list[int]] = {}
        targets["bare proxy"], pid = spawn("proxy", {"upstream": fake})
        cpu_pids["bare proxy"] = [pid]
        if args.uvloop:  # the same hop on uvloop, for a sidecar run on it
            targets["bare proxy (uvloop)"], pid = spawn(
                "proxy", {"upstream": fake, "loop": "uvloop"}
            )
            cpu_pids["bare proxy (uvloop)"] = [pid]
        started = None if args.no_nginx else start_nginx(fake, work / "nginx")
        if started is not None:
            nginx, targets["nginx"] = started
            cpu_pids["nginx"] = process_tree(nginx.pid)
        else:
            notes.append(
                "nginx: left out (--no-nginx)"
                if args.no_nginx
                else "nginx: not installed (apt-get install nginx), reference hop skipped"
            )
        sidecars: list[tuple[str, str, str | None]] = [("sidecar", "router", None)]
        if args.compare_sidecar:
            sidecars.append(
                (
                    "sidecar (compared)",
                    "router (compared)",
                    str(Path(args.compare_sidecar).resolve()),
                )
            )
        for sc_name, router_name, root in sidecars:
            router = ""
            if not args.no_router:
                router, pid = spawn("router", {"catalog": catalog, "root": root})
                cpu_pids[router_name] = [pid]
            else:
                cpu_pids[router_name] = []
            targets[sc_name], pid = spawn(
                "sidecar",
                {
                    "router": router,
                    "catalog": catalog,
                    "root": root,
                    "log_level": args.log_level,
                    # main's checkout has no loop choice: it ran on asyncio's
                    "loop": args.sidecar_loop if root is None else "asyncio",
                    "cprofile": args.cprofile if root is None else None,
                    "log_file": str(work / f"{sc_name.replace(' ', '_')}.log"),
                },
            )
            cpu_pids[sc_name] = [pid]
        print(  # to attach a profiler: py-spy record --pid <pid>
            "pids: " + ", ".join(f"{k}={v}" for k, v in cpu_pids.items()), file=sys.stderr
        )
        idle0 = {name: cpu_seconds(pids) for name, pids in cpu_pids.items()}
        time.sleep(2.0)
        notes.append(
            "idle CPU (no traffic, 2 s; included in CPU/request, as the servers idle "
            "during other targets' rounds): "
            + ", ".join(
                f"{name} {(cpu_seconds(pids) - idle0[name]) / 2.0 * 1000:.1f} ms/s"
                for name, pids in cpu_pids.items()
            )
        )
        runs = []
        for _ in range(args.runs):
            run = {}
            for conc in args.concurrency:
                res, cpu = asyncio.run(
                    measure(targets, args.requests, conc, args.round_size, cpu_pids)
                )
                run[conc] = summarise(res, cpu)
            runs.append(run)
        print(
            f"fake provider: TTFT {args.ttft_ms} ms, "
            f"{'unpaced' if args.tps == 0 else f'{args.tps} tok/s'}, "
            f"{BODY['max_tokens']} tokens; {args.requests} requests per target per row; "
            f"router: {'none (catalog)' if args.no_router else 'real, ranking cached'}; "
            f"sidecar log level: {args.log_level}; sidecar loop: {args.sidecar_loop}; "
            f"compared sidecar: {args.compare_sidecar or 'none'}; cpus: {os.cpu_count()}"
        )
        for note in notes:
            print(f"note: {note}")
        print()
        print(table(runs))
        for bare_name in ("bare proxy", "bare proxy (uvloop)"):
            if bare_name in targets:
                print()
                print(ranges(runs, bare_name))
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(5)
        for p in reversed(procs):  # sidecar first, so it does not see its router vanish
            p.terminate()
        for p in procs:
            p.join(5)
        for log in sorted(work.glob("sidecar*.log")):  # what the router refused, per sidecar
            text = log.read_text(errors="replace")
            print(
                f"{log.stem}: {text.count(chr(10))} log lines, "
                f"{text.count('router rejected outcomes')} 'router rejected outcomes' warnings"
            )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
