"""Routing quality: how close each contender's app-visible TTFT is to an oracle's.

Scenario (phase length P, 10 s; 6 s with --quick), five fake providers of one
model with TTFT medians 80/120/160/200/240 ms (lognormal, sigma 0.2):

====  ==========  ============================================  =============
phase name        what happens (cumulative until "recovery")    oracle calls
====  ==========  ============================================  =============
0     cold        fresh router and sidecar, no data             p0 (80 ms)
1     slowdown    p0 slows 6x (480 ms)                          p1 (120 ms)
2     failure     p1 answers every request with 503             p2 (160 ms)
3     hang        p2 accepts requests and never answers         p3 (200 ms)
4     recovery    everything back to normal                     p0 (80 ms)
====  ==========  ============================================  =============

Every contender gets its own fresh providers, the same incident timeline and
the same seeded open-loop schedule (Poisson arrivals, 20 rps, at most 64
requests in flight: the app's concurrency). Each contender is paired with its
own oracle run, on its own providers, started at the same instant in the same
process: on a shared machine the load changes from one minute to the next, and
a ratio against an oracle measured minutes earlier would mostly measure that
(ours once came out 0.6x "the oracle" in a phase where both called the same
provider). The oracle row is the first pairing's oracle against itself, and
``oracle_ms`` is each pairing's whole-run oracle mean in ms. Contenders: the oracle (calls the
fastest working provider directly, knowing the timeline), our sidecar with
``sort: ttft``, with load balancing, and with ``sort: ttft`` + hedging, and
LiteLLM's Router (latency-based routing and simple shuffle; num_retries 2,
timeout 30 s, stream_timeout 5 s, allowed_fails 3, cooldown 10 s), installed
by this script into ``bench/.litellm-venv`` at exactly litellm==1.106.2 (never
1.107.0) and run by ``bench/litellm_runner.py`` in that interpreter: it is not
a project dependency.

Herd: four equal providers (100 ms), four sidecars on one router asking for
``sort: ttft`` at 40 rps in total (and four LiteLLM latency-based routers):
the busiest provider's share of requests.

Reported per phase and for the whole run: mean and p95 TTFT as ratios to the
oracle's in the same round, app-visible errors, time to demote p0 after its
slowdown (first 1 s window in which it got <= 20% of requests) and to promote
it after recovery (first window with >= 50%), and requests that reached the
hung provider during the hang. Usage::

    .venv/bin/python bench/bench_routing.py [--quick] [--rounds N] [--no-litellm]
        [--only ttft,lb,hedge,litellm,herd] [--per-second] [--no-race-explorations]

``--per-second`` prints, for our contenders, each 1 s window's mean TTFT over
the paired oracle's and every provider's share of the requests sent in it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fake_provider import FakeProvider, FakeProviderConfig  # noqa: E402
from router_common.domain import EndpointKey  # noqa: E402
from router_service.app import RouterApp, Settings  # noqa: E402
from sidecar.app import SidecarApp  # noqa: E402
from sidecar.config import SidecarSettings  # noqa: E402

MODEL = "bench/model-1"
KEY_ENV = "BENCH_PROVIDER_KEY"
LITELLM_VERSION = "1.106.2"  # exact; 1.107.0 is a compromised release and must never be used
LITELLM_VENV = ROOT / "bench" / ".litellm-venv"
PHASES = ("cold", "slowdown", "failure", "hang", "recovery")
TTFT_MS = {"p0": 80.0, "p1": 120.0, "p2": 160.0, "p3": 200.0, "p4": 240.0}
ORACLE = ("p0", "p1", "p2", "p3", "p0")  # fastest working provider, per phase
RATE = 20.0
CONCURRENCY = 64
HERD_TTFT_MS = 100.0


@dataclass
class Result:
    """One request: when it was sent (s since start), its TTFT (None on error), its error."""

    at: float
    ttft: float | None
    error: str | None


@dataclass
class Run:
    name: str
    results: list[Result]
    received: dict[str, list[float]] = field(default_factory=dict)  # provider -> times (s)
    #: (s since start, {provider: health state}) sampled each second (our runs only)
    health: list[tuple[float, dict[str, str]]] = field(default_factory=list)


# --------------------------------------------------------------------------- plumbing


def schedule(duration: float, rate: float, seed: int, lanes: int = 1) -> list[tuple[float, int]]:
    """Poisson arrivals in [0, duration), each with a lane (the sidecar it goes to)."""
    rng = random.Random(seed)
    out: list[tuple[float, int]] = []
    t, i = 0.0, 0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return out
        out.append((t, i % lanes))
        i += 1


async def start_providers(ttfts: dict[str, float]) -> dict[str, FakeProvider]:
    out = {}
    for i, (name, ms) in enumerate(ttfts.items()):
        cfg = FakeProviderConfig(
            name=name, ttft_median_ms=ms, ttft_sigma=0.2, tokens_per_second=500.0, seed=i
        )
        fp = FakeProvider(cfg, host="127.0.0.1", port=0)
        await fp.__aenter__()
        out[name] = fp
    return out


def write_catalog(path: Path, providers: dict[str, FakeProvider]) -> None:
    lines = ["providers:"]
    for name, fp in providers.items():
        lines.append(f'  {name}: {{base_url: "{fp.base_url}", api_key_env: {KEY_ENV}}}')
    lines += ["models:", f"  {MODEL}:", "    endpoints:"]
    for name in providers:  # equal prices: only latency tells them apart
        lines.append(
            f"      - {{provider: {name}, upstream_model: up-{name}, "
            "input_price_per_million: 1.0, output_price_per_million: 1.0}"
        )
    path.write_text("\n".join(lines) + "\n")


def schedule_incidents(providers: dict[str, FakeProvider], start_in: float, p: float) -> None:
    """The scenario's timeline, relative to the schedule's start (``start_in`` from now)."""
    providers["p0"].add_incident("slowdown", factor=6.0, start_in_s=start_in + p, duration_s=3 * p)
    providers["p1"].add_incident("fail", status=503, start_in_s=start_in + 2 * p, duration_s=2 * p)
    providers["p2"].add_incident("hang", start_in_s=start_in + 3 * p, duration_s=p)


async def stream_once(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[float | None, str | None]:
    """POST a streaming chat completion; (TTFT s, error)."""
    t0 = time.perf_counter()
    ttft = None
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                await resp.read()
                return None, f"http_{resp.status}"
            async for line in resp.content:
                if ttft is None and line.startswith(b"data: {"):
                    obj = json.loads(line[6:])
                    choices = obj.get("choices") or []
                    if choices and (choices[0].get("delta") or {}).get("content"):
                        ttft = time.perf_counter() - t0
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return None, type(exc).__name__
    return (ttft, None) if ttft is not None else (None, "no_content")


async def drive(
    plan: list[tuple[float, int]], send: Any, start_in: float = 0.5
) -> tuple[list[Result], float]:
    """Run the open-loop schedule; ``send(i, lane)`` returns (ttft, error)."""
    sem = asyncio.Semaphore(CONCURRENCY)
    loop = asyncio.get_running_loop()
    t0 = loop.time() + start_in
    wall0 = time.time() + start_in
    results: list[Result | None] = [None] * len(plan)

    async def one(i: int, at: float, lane: int) -> None:
        await asyncio.sleep(max(0.0, t0 + at - loop.time()))
        async with sem:
            sent = loop.time() - t0
            ttft, err = await send(i, lane)
            results[i] = Result(sent, ttft, err)

    await asyncio.gather(*(one(i, at, lane) for i, (at, lane) in enumerate(plan)))
    return [r for r in results if r is not None], wall0


def received(providers: dict[str, FakeProvider], wall0: float) -> dict[str, list[float]]:
    return {n: [r.time - wall0 for r in fp.requests] for n, fp in providers.items()}


# --------------------------------------------------------------------------- contenders


async def run_ours(
    name: str,
    plan: list[tuple[float, int]],
    p: float,
    prefs: dict[str, Any] | None,
    ttfts: dict[str, float] = TTFT_MS,
    sidecars: int = 1,
    incidents: bool = True,
    go: asyncio.Event | None = None,
) -> Run:
    providers = await start_providers(ttfts)
    tmp = Path(tempfile.mkdtemp(prefix="bench-routing-"))
    write_catalog(tmp / "catalog.yaml", providers)
    router = RouterApp(
        Settings(
            config_path=str(tmp / "catalog.yaml"),
            grpc_host="127.0.0.1",
            grpc_port=0,
            http_host="127.0.0.1",
            http_port=0,
            watch_catalog=False,
        )
    )
    await router.start()
    apps = []
    for _ in range(sidecars):
        sc = SidecarApp(
            SidecarSettings(
                router=router.grpc_address,
                listen="127.0.0.1:0",
                environ={KEY_ENV: "sk-bench"},
                log_level="WARNING",
                race_explorations=RACE_EXPLORATIONS,
            )
        )
        await sc.start()
        apps.append(sc)
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 4,
        "stream": True,
    }
    if prefs:
        body["provider"] = prefs
    urls = [sc.base_url + "/chat/completions" for sc in apps]
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
        ) as session:
            if incidents:
                schedule_incidents(providers, 0.5, p)
            if go is not None:
                go.set()  # the paired oracle starts its schedule now too
            states: list[tuple[float, dict[str, str]]] = []
            watch = asyncio.ensure_future(watch_health(router, list(providers), states))
            try:
                results, wall0 = await drive(
                    plan, lambda i, lane: stream_once(session, urls[lane], body)
                )
            finally:
                watch.cancel()
        return Run(name, results, received(providers, wall0), states)
    finally:
        for sc in apps:
            await sc.stop()
        await router.stop()
        for fp in providers.values():
            await fp.__aexit__(None, None, None)


async def watch_health(
    router: RouterApp, names: list[str], out: list[tuple[float, dict[str, str]]]
) -> None:
    """The router's health state of each provider, once a second, from the schedule's start."""
    await asyncio.sleep(0.5)  # drive() starts the schedule 0.5 s from now
    t0 = time.perf_counter()
    core = router.core
    assert core is not None  # started
    while True:
        views = {n: core.health.view(EndpointKey(MODEL, n)) for n in names}
        out.append((time.perf_counter() - t0, {n: v.state.name for n, v in views.items()}))
        await asyncio.sleep(1.0)


async def run_oracle(
    plan: list[tuple[float, int]], p: float, go: asyncio.Event | None = None
) -> Run:
    """The oracle; with ``go``, its schedule starts when the paired contender's does."""
    providers = await start_providers(TTFT_MS)
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
        ) as session:
            if go is not None:
                await go.wait()
            schedule_incidents(providers, 0.5, p)
            loop = asyncio.get_running_loop()
            t0 = loop.time() + 0.5  # as drive() counts the schedule from

            async def send(i: int, lane: int) -> tuple[float | None, str | None]:
                # The phase at the moment of sending, not the planned one: a request
                # planned just before the hang but sent just after it (a late timer)
                # went to the hung provider and waited out the client's timeout (an
                # oracle error, and a run held up for minutes).
                phase = min(max(0, int((loop.time() - t0) // p)), len(PHASES) - 1)
                name = ORACLE[phase]
                body = {
                    "model": f"up-{name}",
                    "messages": [{"role": "user", "content": "hello"}],
                    "max_tokens": 4,
                    "stream": True,
                }
                return await stream_once(
                    session, providers[name].base_url + "/chat/completions", body
                )

            results, wall0 = await drive(plan, send)
        return Run("oracle", results, received(providers, wall0))
    finally:
        for fp in providers.values():
            await fp.__aexit__(None, None, None)


def litellm_python() -> Path:
    """The benchmark's own venv with litellm==1.106.2, created on first use."""
    py = LITELLM_VENV / "bin" / "python"
    probe = [str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"]
    if py.exists():
        got = subprocess.run(probe, capture_output=True, text=True).stdout.strip()
        if got == LITELLM_VERSION:
            return py
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", f"litellm=={LITELLM_VERSION}"], check=True
    )
    got = subprocess.run(probe, capture_output=True, text=True).stdout.strip()
    if got != LITELLM_VERSION:
        raise SystemExit(f"expected litellm {LITELLM_VERSION}, got {got!r}")
    return py


async def run_litellm(
    name: str,
    strategy: str,
    plan: list[tuple[float, int]],
    p: float,
    ttfts: dict[str, float] = TTFT_MS,
    routers: int = 1,
    incidents: bool = True,
    go: asyncio.Event | None = None,
) -> Run:
    py = litellm_python()
    providers = await start_providers(ttfts)
    try:
        job = {
            "deployments": [
                {"name": n, "base_url": fp.base_url, "upstream_model": f"up-{n}"}
                for n, fp in providers.items()
            ],
            "strategy": strategy,
            "num_retries": 2,
            "timeout_s": 30.0,
            "stream_timeout_s": 5.0,
            "allowed_fails": 3,
            "cooldown_s": 10.0,
            "concurrency": CONCURRENCY,
            "routers": routers,
            "schedule": plan,
        }
        env = dict(os.environ, LITELLM_LOG="ERROR", LITELLM_LOCAL_MODEL_COST_MAP="True")
        proc = await asyncio.create_subprocess_exec(
            str(py),
            str(ROOT / "bench" / "litellm_runner.py"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(job).encode())
        await proc.stdin.drain()
        proc.stdin.close()
        # The runner imports litellm (seconds) before its schedule starts; incidents are
        # placed when it prints nothing yet, so align on the runner's own clock instead:
        # it starts the schedule 0.5 s after import, we start the incidents at the first
        # request any provider receives.
        if incidents:
            await _align_incidents(providers, p)
        if go is not None:
            go.set()  # about 0.5 s late: the runner's schedule started at its first request
        out = await proc.stdout.read()
        await proc.wait()
        rows = json.loads(out)
        results = [Result(row[3], row[1], row[2]) for row in rows]
        first = min((r.time for fp in providers.values() for r in fp.requests), default=0.0)
        wall0 = first - min((r.at for r in results), default=0.0)
        return Run(name, results, received(providers, wall0))
    finally:
        for fp in providers.values():
            await fp.__aexit__(None, None, None)


async def _align_incidents(providers: dict[str, FakeProvider], p: float) -> None:
    while not any(fp.requests for fp in providers.values()):
        await asyncio.sleep(0.005)
    first = min(r.time for fp in providers.values() for r in fp.requests)
    schedule_incidents(providers, first - time.time(), p)


# --------------------------------------------------------------------------- figures


def ttfts_in(run: Run, lo: float, hi: float) -> list[float]:
    return [r.ttft for r in run.results if lo <= r.at < hi and r.ttft is not None]


def p95(values: list[float]) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, int(0.95 * len(s)))]


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def windows_share(run: Run, provider: str, lo: float, hi: float) -> list[tuple[float, float]]:
    """(window end, share of requests sent in that 1 s window that reached ``provider``)."""
    out = []
    t = lo
    got = run.received.get(provider, [])
    while t < hi:
        sent = sum(1 for r in run.results if t <= r.at < t + 1)
        hit = sum(1 for x in got if t <= x < t + 1)
        out.append((t + 1 - lo, hit / sent if sent else 0.0))
        t += 1
    return out


def demote_promote(run: Run, p: float) -> tuple[float | None, float | None]:
    demote = next((end for end, s in windows_share(run, "p0", p, 4 * p) if s <= 0.2), None)
    promote = next((end for end, s in windows_share(run, "p0", 4 * p, 5 * p) if s >= 0.5), None)
    return demote, promote


def row(run: Run, oracle: Run, p: float) -> dict[str, Any]:
    out: dict[str, Any] = {"contender": run.name}
    out["oracle_ms"] = 1000.0 * mean(ttfts_in(oracle, 0.0, 5 * p))
    spans = {ph: (i * p, (i + 1) * p) for i, ph in enumerate(PHASES)}
    spans["whole"] = (0.0, 5 * p)
    for ph, (lo, hi) in spans.items():
        ours, best = ttfts_in(run, lo, hi), ttfts_in(oracle, lo, hi)
        out[f"{ph}_mean"] = mean(ours) / mean(best)
        out[f"{ph}_p95"] = p95(ours) / p95(best)
    ex = [r for ph in PHASES if ph != "hang" for r in ttfts_in(run, *spans[ph])]
    exo = [r for ph in PHASES if ph != "hang" for r in ttfts_in(oracle, *spans[ph])]
    out["nohang_mean"] = mean(ex) / mean(exo)
    out["nohang_p95"] = p95(ex) / p95(exo)
    out["errors"] = sum(1 for r in run.results if r.error is not None)
    out["demote_s"], out["promote_s"] = demote_promote(run, p)
    out["hung_waits"] = sum(1 for x in run.received.get("p2", []) if 3 * p <= x < 4 * p)
    return out


def fmt(x: Any) -> str:
    if x is None:
        return "never"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.0f}" if x >= 20 else f"{x:.2f}"
    return str(x)


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = (
        ["contender", "whole_mean", "whole_p95", "nohang_mean", "nohang_p95"]
        + [f"{ph}_mean" for ph in PHASES]
        + [f"{ph}_p95" for ph in PHASES]
        + ["errors", "demote_s", "promote_s", "hung_waits", "oracle_ms"]
    )
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")


def busiest_share(run: Run) -> float:
    counts = Counter({n: len(v) for n, v in run.received.items()})
    total = sum(counts.values())
    return max(counts.values()) / total if total else math.nan


# --------------------------------------------------------------------------- main


def per_second(run: Run, oracle: Run, p: float) -> None:
    """Per 1 s window: mean TTFT over the paired oracle's, and each provider's share.

    Where a contender loses time (a phase's first seconds, a probe, the cold
    start) shows here, not in the phase means.
    """
    names = sorted(run.received)
    print(f"\n{run.name}, per second (ratio to the paired oracle; share of requests)\n")
    print("| s | phase | ratio | " + " | ".join(names) + " | not healthy |")
    print("|" + "---|" * (4 + len(names)))
    for sec in range(int(5 * p)):
        ours, best = ttfts_in(run, sec, sec + 1), ttfts_in(oracle, sec, sec + 1)
        sent = sum(1 for r in run.results if sec <= r.at < sec + 1) or 1
        shares = [sum(1 for x in run.received[n] if sec <= x < sec + 1) / sent for n in names]
        phase = PHASES[min(int(sec // p), len(PHASES) - 1)]
        cells = " | ".join(f"{s:.0%}" for s in shares)
        states = next((st for at, st in run.health if at >= sec), {})
        sick = " ".join(f"{n}:{st.lower()}" for n, st in states.items() if st != "HEALTHY")
        print(f"| {sec} | {phase} | {fmt(mean(ours) / mean(best))} | {cells} | {sick} |")


def herd_per_second(run: Run, duration: float) -> None:
    """Per 1 s window of the herd run: each provider's share of the requests sent in it.

    Shows whether an imbalance is a steady lean or one provider left out for seconds.
    """
    names = sorted(run.received)
    print("\nherd, per second (share of requests)\n")
    print("| s | " + " | ".join(names) + " |")
    print("|" + "---|" * (1 + len(names)))
    for sec in range(math.ceil(duration)):
        sent = sum(1 for r in run.results if sec <= r.at < sec + 1) or 1
        shares = [sum(1 for x in run.received[n] if sec <= x < sec + 1) / sent for n in names]
        print(f"| {sec} | " + " | ".join(f"{s:.0%}" for s in shares) + " |")
    total = {n: len(v) for n, v in run.received.items()}
    print("\nwhole run: " + ", ".join(f"{n} {c}" for n, c in sorted(total.items())))


CONTENDERS = ("ttft", "lb", "hedge", "litellm", "herd")
#: Our sidecars' ``race_explorations`` (``--no-race-explorations``: the behaviour before it).
RACE_EXPLORATIONS = True


async def one_round(
    p: float,
    herd_s: float,
    seed: int,
    with_litellm: bool,
    only: frozenset[str] = frozenset(CONTENDERS),
    detail: bool = False,
) -> dict[str, Any]:
    plan = schedule(5 * p, RATE, seed)
    with_litellm = with_litellm and "litellm" in only

    async def paired(contender: Any) -> tuple[Run, Run]:
        """The contender and an oracle run started at the same instant (see the docstring)."""
        go = asyncio.Event()
        oracle = asyncio.ensure_future(run_oracle(plan, p, go))
        try:
            run = await contender(go)
        except BaseException:
            oracle.cancel()
            raise
        return run, await oracle

    pairs = []
    if "ttft" in only:
        pairs.append(
            await paired(lambda go: run_ours("ours sort=ttft", plan, p, {"sort": "latency"}, go=go))
        )
    if "lb" in only:
        pairs.append(await paired(lambda go: run_ours("ours load balance", plan, p, None, go=go)))
    if "hedge" in only:
        pairs.append(
            await paired(
                lambda go: run_ours(
                    "ours sort=ttft + hedge", plan, p, {"sort": "latency", "hedge": True}, go=go
                )
            )
        )
    if with_litellm:
        pairs.append(
            await paired(
                lambda go: run_litellm(
                    "LiteLLM latency-based", "latency-based-routing", plan, p, go=go
                )
            )
        )
        pairs.append(
            await paired(
                lambda go: run_litellm("LiteLLM simple-shuffle", "simple-shuffle", plan, p, go=go)
            )
        )
    rows = []
    if pairs:
        first_oracle = pairs[0][1]
        rows = [row(first_oracle, first_oracle, p)] + [row(run, oracle, p) for run, oracle in pairs]
    if detail:
        for run, oracle in pairs:
            if run.name.startswith("ours"):
                per_second(run, oracle, p)
    if "herd" not in only:
        return {"rows": rows, "herd": {}}
    herd_plan = schedule(herd_s, 2 * RATE, seed + 1, lanes=4)
    equal = {f"h{i}": HERD_TTFT_MS for i in range(4)}
    ours_herd = await run_ours(
        "herd", herd_plan, p, {"sort": "latency"}, equal, sidecars=4, incidents=False
    )
    if detail:
        herd_per_second(ours_herd, herd_s)
    herd = {"ours": busiest_share(ours_herd)}
    if with_litellm:
        herd["LiteLLM latency-based"] = busiest_share(
            await run_litellm(
                "herd", "latency-based-routing", herd_plan, p, equal, routers=4, incidents=False
            )
        )
    return {"rows": rows, "herd": herd}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="6 s phases instead of 10 s")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM contenders")
    ap.add_argument("--json", type=Path, help="also write every round's figures here")
    ap.add_argument(
        "--only",
        default=",".join(CONTENDERS),
        help=f"comma-separated subset of {','.join(CONTENDERS)} (default: all)",
    )
    ap.add_argument(
        "--per-second", action="store_true", help="also print our contenders' per-second view"
    )
    ap.add_argument(
        "--no-race-explorations",
        action="store_true",
        help="our sidecars explore in the app's path, unraced (the behaviour before issue 16e)",
    )
    args = ap.parse_args()
    global RACE_EXPLORATIONS
    RACE_EXPLORATIONS = not args.no_race_explorations
    only = frozenset(x.strip() for x in args.only.split(",") if x.strip())
    if not only <= set(CONTENDERS):
        ap.error(f"--only: unknown {sorted(only - set(CONTENDERS))}; choose from {CONTENDERS}")
    p = 6.0 if args.quick else 10.0
    herd_s = 6.0 if args.quick else 10.0
    rounds = []
    for i in range(args.rounds):
        res = asyncio.run(
            one_round(p, herd_s, args.seed + i, not args.no_litellm, only, args.per_second)
        )
        rounds.append(res)
        print(f"\n### round {i + 1} (phase {p:g} s, {RATE:g} rps, seed {args.seed + i})\n")
        if res["rows"]:
            print_table(res["rows"])
        if res["herd"]:
            print(
                "\nHerd, busiest provider's share: "
                + ", ".join(f"{k} {v:.1%}" for k, v in res["herd"].items())
            )
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=1, default=str))


if __name__ == "__main__":
    main()
