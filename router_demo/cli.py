"""``router-demo``: fake providers, the router, a sidecar, traffic and scripted incidents.

Interactive (no ``--duration``): a live terminal view until Ctrl-C; the
incident script repeats every 90 s. Unattended (``--duration SECONDS``): the
script is fitted into the duration, then a summary is printed and the exit
status says whether every incident was detected and routed around (0) or not
(1). A process that fails to start exits 2 with the tail of its log. Every
process the demo started is stopped on exit, Ctrl-C, SIGTERM or error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.live import Live

from router_common.cli_help import DefaultsHelpFormatter
from router_common.json_text import as_json
from router_demo.catalog import model_providers, provider_specs
from router_demo.incidents import IncidentResult, IncidentScript, evaluate, plan_incidents
from router_demo.monitor import HealthMonitor
from router_demo.processes import StartupError, pid_alive, port_open
from router_demo.stack import Stack
from router_demo.summary import build_summary, print_summary
from router_demo.traffic import TrafficGenerator
from router_demo.view import DemoView

INTERACTIVE_CYCLE_S = 90.0
#: The shortest unattended run that shows both incidents end to end: the
#: slowdown lasts a quarter of the run and must be detected inside it (enough
#: slow samples for the median of the last 20), and routed around with 2 s of
#: clean traffic after. 30 s left it a 7.5 s window and failed; 45 s gives 11 s
#: (tests/test_demo.py runs exactly this). Measured on a shared 2-core machine
#: (2026-12-01): detected after 9.5 s at 45 s, 7.7 and 8.5 s at 60 s, because
#: TTFT-sorted traffic leaves the slow provider within 4-5 s and the slow samples
#: then trickle in; so at 45 s the margin is about 2 s, not the 8 s once assumed.
MIN_DURATION_S = 45.0
#: Traffic goes to these models (the view shows them); weights favour the one
#: with the most providers, so its endpoints gather samples quickly.
DEFAULT_MODELS = {"openai/gpt-oss-120b": 0.6, "zai/glm-4.7": 0.4}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="router-demo",
        description="Run fake providers, the router and a sidecar with traffic and incidents.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"run unattended for this long (>= {MIN_DURATION_S:.0f}), then print a summary; "
        "exit 0 only if every incident was detected and routed around; "
        "interrupted (Ctrl-C, SIGTERM), 128 + the signal, with no verdict "
        "(default: none, run live until Ctrl-C)",
    )
    p.add_argument("--no-live", action="store_true", help="plain status lines, no live view")
    p.add_argument(
        "--json",
        action="store_true",
        help='end the summary with one JSON line (starts with {"router_demo_summary":) '
        "for scripts and CI",
    )
    p.add_argument("--rps", type=float, default=25.0, help="requests per second (default 25)")
    p.add_argument("--seed", type=int, default=1, help="seed for traffic and fakes (default 1)")
    p.add_argument(
        "--base-port",
        type=int,
        default=0,
        help="use consecutive ports from here (providers, router gRPC, router HTTP, sidecar); "
        "default: free ephemeral ports",
    )
    p.add_argument("--catalog", default=None, help="catalog to start from (default: the example)")
    p.add_argument("--fail-provider", default="deepinfra", help="provider that starts failing")
    p.add_argument("--slow-provider", default="cerebras", help="provider that slows down")
    p.add_argument("--slowdown-factor", type=float, default=3.0, help="slowdown factor")
    p.add_argument("--max-tokens", type=int, default=16, help="max_tokens per request")
    p.add_argument(
        "--dump-records",
        metavar="PATH",
        default=None,
        help="write every request record and health poll as JSON lines (for debugging)",
    )
    args = p.parse_args(argv)
    # nan compares false with every bound: --rps nan passed "<= 0", then the demo
    # spun without sending a request and ignored SIGTERM.
    for flag, value in (
        ("--duration", args.duration),
        ("--rps", args.rps),
        ("--slowdown-factor", args.slowdown_factor),
    ):
        if value is not None and not math.isfinite(value):
            p.error(f"{flag} must be a finite number, got {as_json(value)}")
    if args.slowdown_factor <= 0:
        p.error("--slowdown-factor must be positive")
    if args.max_tokens < 1:
        p.error("--max-tokens must be at least 1")
    if args.duration is not None and args.duration < MIN_DURATION_S:
        p.error(f"--duration must be at least {MIN_DURATION_S:.0f} seconds")
    if args.rps <= 0:
        p.error("--rps must be positive")
    if not 0 <= args.base_port <= 65000:
        p.error("--base-port must be within 1..65000 (0 = ephemeral)")
    return args


async def run(args: argparse.Namespace, console: Console) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="router-demo-"))
    stack = Stack(workdir, base_port=args.base_port, seed=args.seed, source_catalog=args.catalog)
    try:
        stack.allocate_ports()
    except StartupError as exc:
        # One plain line (rich would wrap it at 80 columns when not on a terminal).
        print(f"router-demo: {exc}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        return 2
    stop = asyncio.Event()
    #: Signals that ended the run: an interrupted run is never judged a pass.
    interrupted: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        interrupted.append(sig)
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    live_view = not args.no_live and console.is_terminal
    try:
        console.print(
            f"[bold]router-demo[/]: starting fake providers, router, sidecar (logs in {workdir})"
        )
        start_task = asyncio.create_task(stack.start())
        stop_wait = asyncio.create_task(stop.wait())
        await asyncio.wait({start_task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not start_task.done():  # Ctrl-C while starting
            start_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StartupError):
                await start_task
            console.print("router-demo: interrupted while starting; stopping everything")
            return 130
        stop_wait.cancel()
        start_task.result()
        rc = await _run_started(args, console, stack, stop, live_view, workdir, interrupted)
        if rc == 0 and args.duration is not None:
            stack.stop()
            shutil.rmtree(workdir, ignore_errors=True)  # unattended success: nothing to read
        return rc
    except StartupError as exc:
        console.print(f"[red]router-demo: {exc}[/]")
        return 2
    finally:
        stack.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _run_started(
    args: argparse.Namespace,
    console: Console,
    stack: Stack,
    stop: asyncio.Event,
    live_view: bool,
    workdir: Path,
    interrupted: Sequence[signal.Signals] = (),
) -> int:
    providers_of = model_providers(stack.catalog)
    weights = {m: w for m, w in DEFAULT_MODELS.items() if m in providers_of}
    if not weights:  # a custom catalog: its first two models
        weights = {m: 1.0 for m in list(providers_of)[:2]}
    roles = (("--fail-provider", args.fail_provider), ("--slow-provider", args.slow_provider))
    for role, name in roles:
        if name not in stack.provider_ports:
            raise StartupError(f"{role} {name!r} is not a provider of the catalog")

    t0 = time.monotonic()

    def clock() -> float:
        return time.monotonic() - t0

    cycle = args.duration or INTERACTIVE_CYCLE_S
    n_cycles = 1 if args.duration else 1000
    plans = [
        plan
        for k in range(n_cycles)
        for plan in plan_incidents(
            cycle, args.fail_provider, args.slow_provider, args.slowdown_factor, offset_s=k * cycle
        )
    ]
    traffic = TrafficGenerator(
        sidecar_url=stack.sidecar_url,
        models={m: providers_of[m] for m in weights},
        model_weights=weights,
        rps=args.rps,
        clock=clock,
        max_tokens=args.max_tokens,
        seed=args.seed,
        manual_order=(args.fail_provider, "together"),
    )
    monitor = HealthMonitor(stack.grpc_address, list(weights), clock)
    script = IncidentScript(plans, stack.control_urls(), clock)
    view = DemoView(
        clock=clock,
        duration_s=args.duration,
        models=list(weights),
        providers={s.name: s for s in provider_specs(stack.catalog)},
        traffic=traffic,
        script=script,
        monitor=monitor,
        dashboard_url=stack.dashboard_url,
        sidecar_url=stack.sidecar_url,
        log_dir=str(workdir),
    )
    console.print(f"dashboard: [underline cyan]{stack.dashboard_url}[/]")
    tasks = [
        asyncio.create_task(traffic.run(stop), name="traffic"),
        asyncio.create_task(monitor.run(stop), name="monitor"),
        asyncio.create_task(script.run(stop), name="incidents"),
    ]
    deadline = args.duration

    async def tick(interval: float) -> bool:
        """Sleep one display tick; False once it is time to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if deadline is not None and clock() >= deadline:
            stop.set()
        for task in tasks:  # a crashed worker ends the demo with its traceback
            if task.done() and not task.cancelled() and task.exception():
                stop.set()
        return not stop.is_set()

    if live_view:
        with Live(view.render(), console=console, refresh_per_second=4, transient=False) as live:
            while await tick(0.25):
                live.update(view.render())
            live.update(view.render())
    else:
        next_line = 0.0
        while await tick(0.25):
            if clock() >= next_line:
                print(view.status_line(), flush=True)
                next_line = clock() + 5.0
    elapsed = clock()
    results = await _finish(tasks, script, traffic, monitor)
    stack.stop()
    leftovers = [pid for pid in stack.supervisor.pids if pid_alive(pid)]
    leftovers_ports = [p for p in stack.ports if port_open(p)]
    errors = [*script.errors]
    if leftovers:
        errors.append(f"processes still running after stop: {leftovers}")
    if leftovers_ports:
        errors.append(f"ports still open after stop: {leftovers_ports}")
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            errors.append(f"{task.get_name()} crashed: {task.exception()!r}")
    summary = build_summary(
        traffic.records,
        results,
        duration_s=elapsed,
        pids=stack.supervisor.pids,
        ports=stack.ports,
        dashboard_url=stack.dashboard_url,
        skipped=traffic.skipped,
        errors=errors,
        interrupted=bool(interrupted),
        # Unattended runs plan exactly what fits the duration; interactive ones plan
        # cycles until Ctrl-C, so the ones never reached are not "not run".
        incidents_not_run=(
            sum(1 for i in range(len(script.plans)) if i not in script.started)
            if args.duration is not None
            else 0
        ),
    )
    print_summary(summary, console, as_json=args.json)
    if args.dump_records:
        _dump(Path(args.dump_records), traffic, monitor)
    if args.duration is None:
        return 0
    if interrupted:  # the shell's convention for a run ended by a signal
        return 128 + interrupted[0]
    return 0 if summary["all_incidents_handled"] and not leftovers else 1


async def _finish(
    tasks: list[asyncio.Task[None]],
    script: IncidentScript,
    traffic: TrafficGenerator,
    monitor: HealthMonitor,
) -> list[IncidentResult]:
    """Let the workers wind down, then measure every incident that started."""
    _done, pending = await asyncio.wait(tasks, timeout=10.0)
    for task in pending:
        task.cancel()
    results = []
    for i, plan in enumerate(script.plans):
        if i not in script.started:
            continue
        end = script.ended.get(i, plan.end_s)
        results.append(
            evaluate(
                plan,
                script.started[i],
                end,
                traffic.records,
                monitor.samples,
                # Ended on schedule means at or after the planned end; earlier, the
                # script was stopped (Ctrl-C, SIGTERM) in the middle of it.
                cut_short=end < plan.end_s,
            )
        )
    return results


def _dump(path: Path, traffic: TrafficGenerator, monitor: HealthMonitor) -> None:
    """Every request record and health poll, one JSON object a line."""
    with path.open("w", encoding="utf-8") as fh:
        for rec in traffic.records:
            fh.write(json.dumps({"request": dataclasses.asdict(rec)}) + "\n")
        for t, states in monitor.samples:
            flat = {f"{p}|{m}": st for (m, p), st in states.items()}
            fh.write(json.dumps({"health": {"t": t, "states": flat}}) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    try:
        return asyncio.run(run(args, console))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130


if __name__ == "__main__":
    sys.exit(main())
