"""Where a hop's added time to first token goes: per-request timestamps in the hop.

The bare aiohttp hop (bench_sidecar's ``start_bare_proxy``, with stamps) and the
sidecar (stamped by wrapping a few of its methods in its own process; nothing in
``sidecar/`` changes) serve the same streamed requests from one client, in
interleaved rounds, as bench_sidecar does. Every process stamps
``time.perf_counter()`` (CLOCK_MONOTONIC: one clock for all processes on Linux),
the client tags each request with an ``x-probe`` header, and the stamps are joined
per request:

    client send -> hop reads the request (data_received) -> handler task starts
    -> upstream request written -> upstream's first body byte read (data_received)
    -> the handler has it -> first write to the app -> the client has its first token
    -> the handler returns (bookkeeping, access line)

Not a figure for issue 13's ratios (the stamps cost a little): it is for the
breakdown. The wrappers add a few µs per request to the sidecar only.

    .venv/bin/python bench/bench_ttft_breakdown.py --requests 1600 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sidecar as bs

pc = time.perf_counter
_PROBE = re.compile(rb"(?i)\r\nx-probe: *(\d+)")


def _install_sidecar_probe(records: list[dict[str, Any]]) -> None:
    """Wrap the sidecar's front, upstream client and proxy steps with stamps."""
    from sidecar import lean_http, lean_server, proxy

    by_task: dict[Any, dict[str, Any]] = {}

    def rec() -> dict[str, Any] | None:
        return by_task.get(asyncio.current_task())

    orig_dr = lean_server.LeanConnection.data_received

    def data_received(self: Any, data: bytes) -> None:
        if self.task is None:
            self._probe_recv = pc()
        orig_dr(self, data)

    orig_serve = lean_server.LeanConnection._serve

    async def serve(self: Any, req: Any) -> None:
        m = _PROBE.search(b"\r\n" + req._head)
        r: dict[str, Any] = {
            "id": int(m.group(1)) if m else -1,
            "recv": getattr(self, "_probe_recv", None),
            "start": pc(),
        }
        task = asyncio.current_task()
        by_task[task] = r
        try:
            await orig_serve(self, req)
        finally:
            r["end"] = pc()
            by_task.pop(task, None)
            r.pop("conn", None)
            records.append(r)

    orig_handle = proxy.Proxy.handle

    async def handle(self: Any, request: Any, req: Any, t_start: float) -> Any:
        r = rec()
        if r is not None:
            r["parsed"] = pc()
        try:
            return await orig_handle(self, request, req, t_start)
        finally:
            if r is not None:
                r["handled"] = pc()

    orig_send = lean_http._Conn.send

    def up_send(self: Any, data: bytes, head: Any) -> None:
        r = rec()
        if r is not None and "up_send" not in r:
            r["up_send"] = pc()
            r["conn"] = self
        orig_send(self, data, head)

    orig_up_dr = lean_http._Conn.data_received

    def up_data_received(self: Any, data: bytes) -> None:
        self._probe_last = pc()
        orig_up_dr(self, data)

    orig_readany = lean_http.LeanResponse.readany

    async def readany(self: Any) -> bytes:
        data = await orig_readany(self)
        r = rec()
        if r is not None and "resumed" not in r and data:
            r["resumed"] = pc()
            conn = r.get("conn")
            r["up_recv"] = getattr(conn, "_probe_last", None)
        return data

    orig_first = proxy.read_until_first_token

    async def first(resp: Any, rec_: Any, scanner: Any) -> Any:
        out = await orig_first(resp, rec_, scanner)
        r = rec()
        if r is not None:
            r["scanned"] = pc()
        return out

    orig_cl_send = lean_server.LeanConnection.send

    async def cl_send(self: Any, data: bytes) -> None:
        r = rec()
        if r is not None and "cl_send" not in r:
            r["cl_send"] = pc()
        await orig_cl_send(self, data)
        if r is not None and "cl_sent" not in r:
            r["cl_sent"] = pc()

    lean_server.LeanConnection.data_received = data_received  # type: ignore[method-assign]
    lean_server.LeanConnection._serve = serve  # type: ignore[method-assign]
    proxy.Proxy.handle = handle  # type: ignore[method-assign]
    lean_http._Conn.send = up_send  # type: ignore[method-assign]
    lean_http._Conn.data_received = up_data_received  # type: ignore[method-assign]
    lean_http.LeanResponse.readany = readany  # type: ignore[method-assign]
    proxy.read_until_first_token = first  # type: ignore[assignment]
    lean_server.LeanConnection.send = cl_send  # type: ignore[method-assign]


async def start_probed_bare_proxy(upstream: str, records: list[dict[str, Any]]) -> web.AppRunner:
    """bench_sidecar's bare hop, the same calls, with the same stamps."""
    from aiohttp import client_proto, web_protocol

    server_recv: dict[int, float] = {}
    client_recv: dict[int, float] = {}
    orig_dr = web_protocol.RequestHandler.data_received

    def data_received(self: Any, data: bytes) -> None:
        server_recv[id(self)] = pc()
        orig_dr(self, data)

    orig_up_dr = client_proto.ResponseHandler.data_received

    def up_data_received(self: Any, data: bytes) -> None:
        client_recv[id(self)] = pc()
        orig_up_dr(self, data)

    web_protocol.RequestHandler.data_received = data_received  # type: ignore[method-assign]
    client_proto.ResponseHandler.data_received = up_data_received  # type: ignore[method-assign]

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def handle(request: web.Request) -> web.StreamResponse:
        r: dict[str, Any] = {
            "id": int(request.headers.get("x-probe", "-1")),
            "recv": server_recv.get(id(request.protocol)),
            "start": pc(),
        }
        try:
            body = await request.read()
            r["parsed"] = r["up_send"] = pc()  # the post writes at once
            async with session.post(
                upstream + "/chat/completions",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as up:
                proto = up.connection.protocol if up.connection is not None else None
                resp = web.StreamResponse(
                    status=up.status,
                    headers={"Content-Type": up.headers.get("Content-Type", "text/event-stream")},
                )
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    if "resumed" not in r:
                        r["resumed"] = r["scanned"] = pc()
                        r["up_recv"] = client_recv.get(id(proto))
                        r["cl_send"] = pc()
                        await resp.write(chunk)
                        r["cl_sent"] = pc()
                    else:
                        await resp.write(chunk)
                await resp.write_eof()
                r["handled"] = pc()
                return resp
        finally:
            r["end"] = pc()
            records.append(r)

    return await bs.serve_hop(handle, session)


def _serve_probed(kind: str, arg: dict[str, Any], q: Any) -> None:
    """bench_sidecar's server processes; the hops stamped, the stamps to arg["dump"]."""
    records: list[dict[str, Any]] = []
    if arg.get("root"):
        sys.path.insert(0, arg["root"])
    if kind == "sidecar":
        _install_sidecar_probe(records)
    if kind == "proxy":

        async def bare(upstream: str) -> web.AppRunner:
            return await start_probed_bare_proxy(upstream, records)

        bs.start_bare_proxy = bare
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner() as runner:
        runner.run(bs._serve_async(kind, arg, q))
    if arg.get("dump"):
        Path(arg["dump"]).write_text(json.dumps(records))


async def _one(session: aiohttp.ClientSession, base: str, pid: int, out: list[Any]) -> None:
    t0 = pc()
    ttft = None
    async with session.post(
        base + "/chat/completions", json=bs.BODY, headers={"x-probe": str(pid)}
    ) as r:
        t_head = pc()
        async for line in r.content:
            if ttft is None and b'"content":"' in line and b'"content":""' not in line:
                ttft = pc()
    out.append({"id": pid, "send": t0, "head": t_head, "token": ttft or pc(), "done": pc()})


async def _measure(
    targets: dict[str, str], requests: int, conc: int, pids: dict[str, int], cpu: dict[str, Any]
) -> dict[str, list[Any]]:
    """Stamps per request per target; in ``cpu``, each process's CPU seconds and the wall
    time spent in each target's rounds (who else ran while a hop served)."""
    res: dict[str, list[Any]] = {k: [] for k in targets}
    pids = {**pids, "client": os.getpid()}
    counter = iter(range(10**9))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def rnd(name: str, base: str, n: int, out: list[Any]) -> None:
            sem = asyncio.Semaphore(conc)

            async def task() -> None:
                async with sem:
                    await _one(session, base, next(counter), out)

            await asyncio.gather(*(task() for _ in range(n)))

        for name, base in targets.items():
            await rnd(name, base, max(conc, 20), [])
        per_round = max(10, 4 * conc)
        for name in targets:
            cpu[name] = {"wall": 0.0, **dict.fromkeys(pids, 0.0)}
        for _ in range(max(1, requests // per_round)):
            for name, base in targets.items():
                c0 = {p: bs.cpu_seconds([pid]) for p, pid in pids.items()}
                t0 = pc()
                await rnd(name, base, per_round, res[name])
                cpu[name]["wall"] += pc() - t0
                for p, pid in pids.items():
                    cpu[name][p] += bs.cpu_seconds([pid]) - c0[p]
    return res


def _cpu_report(cpu: dict[str, Any], counts: dict[str, int]) -> str:
    """CPU of every process during each target's rounds, ms per request of that target."""
    procs = [p for p in next(iter(cpu.values())) if p != "wall"]
    lines = [
        "CPU of each process while each target's rounds ran, ms per request of that target "
        "(and the rounds' wall time per request)",
        "",
        "| rounds of | wall | " + " | ".join(procs) + " |",
        "|---|---:|" + "---:|" * len(procs),
    ]
    for name, row in cpu.items():
        n = max(1, counts.get(name, 1))
        lines.append(
            f"| {name} | {row['wall'] / n * 1000:.3f} | "
            + " | ".join(f"{row[p] / n * 1000:.3f}" for p in procs)
            + " |"
        )
    return "\n".join(lines)


SEGMENTS = [
    ("client send → hop reads the request", "c.send", "recv"),
    ("→ handler task runs", "recv", "start"),
    ("→ request parsed, plan (sidecar)", "start", "parsed"),
    ("→ upstream request written", "parsed", "up_send"),
    ("upstream written → its first body byte read", "up_send", "up_recv"),
    ("→ the handler has it", "up_recv", "resumed"),
    ("→ scanned (sidecar)", "resumed", "scanned"),
    ("→ first write to the app begins", "scanned", "cl_send"),
    ("→ that write returns", "cl_send", "cl_sent"),
    ("first write → client has its first token", "cl_sent", "c.token"),
    ("first write returns → proxy.handle returns (sidecar)", "cl_sent", "handled"),
    ("→ the handler's task ends (access line, keep-alive)", "handled", "end"),
    ("the handler has the first byte → its task ends", "resumed", "end"),
]


def _report(client: dict[str, list[Any]], hops: dict[str, list[Any]]) -> str:
    direct = statistics.median(r["token"] - r["send"] for r in client["direct"])
    lines = [
        f"direct TTFT p50 {direct * 1000:.3f} ms; per segment, ms: median (mean)",
        "",
        "| segment | " + " | ".join(hops) + " |",
        "|---|" + "---:|" * len(hops),
    ]
    joined: dict[str, list[dict[str, float]]] = {}
    for name, recs in hops.items():
        by_id = {r["id"]: r for r in recs}
        rows = []
        for c in client[name]:
            h = by_id.get(c["id"])
            if h is None:
                continue
            row = {f"c.{k}": v for k, v in c.items() if k != "id"}
            row.update({k: v for k, v in h.items() if isinstance(v, float)})
            rows.append(row)
        joined[name] = rows
    for label, a, b in SEGMENTS:
        cells = []
        for name in hops:
            vals = [(r[b] - r[a]) * 1000 for r in joined[name] if a in r and b in r]
            cells.append(
                f"{statistics.median(vals):.3f} ({statistics.fmean(vals):.3f})" if vals else "-"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = []
    for name in hops:
        vals = [(r["c.token"] - r["c.send"] - direct) * 1000 for r in joined[name]]
        cells.append(f"{statistics.median(vals):.3f} ({statistics.fmean(vals):.3f})")
    lines.append("| **added TTFT** (client) | " + " | ".join(cells) + " |")
    cells = []
    for name in hops:
        cells.append(str(len(joined[name])))
    lines.append("| requests joined | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1600)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--ttft-ms", type=float, default=20.0)
    ap.add_argument("--tps", type=float, default=0.0)
    ap.add_argument("--compare-sidecar", metavar="DIR")
    ap.add_argument("--json", metavar="FILE", help="also write the joined stamps here")
    args = ap.parse_args()
    os.environ.setdefault("BENCH_FAKE_KEY", "bench-key")
    work = Path(tempfile.mkdtemp(prefix="bench_ttft_"))
    procs: list[Any] = []
    spawn = bs.process_spawner(_serve_probed, procs)

    dumps: dict[str, Path] = {}
    try:
        pids: dict[str, int] = {}
        fake, pids["fake"] = spawn("fake", {"ttft_ms": args.ttft_ms, "tps": args.tps})
        catalog = str(work / "catalog.yaml")
        Path(catalog).write_text(
            f"providers:\n  fake: {{base_url: '{fake}', api_key_env: BENCH_FAKE_KEY}}\n"
            f"models:\n  {bs.MODEL}:\n    endpoints:\n"
            "      - {provider: fake, upstream_model: m, input_price_per_million: 1, "
            "output_price_per_million: 1}\n"
        )
        targets = {"direct": fake}
        dumps["bare proxy"] = work / "bare.json"
        targets["bare proxy"], pids["bare proxy"] = spawn(
            "proxy", {"upstream": fake, "dump": dumps["bare proxy"]}
        )
        sidecars: list[tuple[str, str | None]] = [("sidecar", None)]
        if args.compare_sidecar:
            sidecars.append(("sidecar (compared)", str(Path(args.compare_sidecar).resolve())))
        for name, root in sidecars:
            router, pids[name.replace("sidecar", "router")] = spawn(
                "router", {"catalog": catalog, "root": root}
            )
            dumps[name] = work / f"{name.replace(' ', '_')}.json"
            targets[name], pid = spawn(
                "sidecar",
                {
                    "router": router,
                    "catalog": catalog,
                    "root": root,
                    "log_level": "info",
                    "log_file": str(work / f"{name.replace(' ', '_')}.log"),
                    "dump": dumps[name],
                },
            )
            pids[name] = pid
            print(f"{name} pid {pid}", file=sys.stderr)
        time.sleep(2.0)
        cpu: dict[str, Any] = {}
        client = asyncio.run(_measure(targets, args.requests, args.concurrency, pids, cpu))
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.join(10)
    hops = {name: json.loads(path.read_text()) for name, path in dumps.items() if path.exists()}
    print(
        f"{args.concurrency} streams, {args.requests} requests per target, fake TTFT "
        f"{args.ttft_ms} ms, {'unpaced' if args.tps == 0 else f'{args.tps} tok/s'}"
    )
    print(_report(client, hops))
    print()
    print(_cpu_report(cpu, {name: len(v) for name, v in client.items()}))
    if args.json:
        Path(args.json).write_text(json.dumps({"client": client, "hops": hops}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
