"""The end-of-run summary: tables and plain-words definitions for people, and, with
``--json``, one JSON line for tests and CI.

The JSON line (only with ``--json``) is the last line on stdout and starts with
``{"router_demo_summary":`` so a script can find it without parsing the rich
output above it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from router_demo.incidents import IncidentResult
from router_demo.traffic import RequestRecord

SUMMARY_KEY = "router_demo_summary"


def build_summary(
    records: Sequence[RequestRecord],
    results: Sequence[IncidentResult],
    *,
    duration_s: float,
    pids: Sequence[int],
    ports: Sequence[int],
    dashboard_url: str,
    skipped: int = 0,
    errors: Sequence[str] = (),
    interrupted: bool = False,
    incidents_not_run: int = 0,
) -> dict[str, Any]:
    """Everything the summary shows, as JSON-ready data.

    ``interrupted``: the run was ended by Ctrl-C or SIGTERM rather than by its
    ``--duration``; ``incidents_not_run``: planned incidents that never started
    for that reason. Neither kind of incident can be judged, so an interrupted
    run is never reported as one where every incident was handled.
    """
    ok = sum(1 for r in records if r.ok)
    failed = [r for r in records if not r.ok]
    served = Counter(r.provider for r in records if r.ok and r.provider)
    by_label: dict[str, dict[str, int]] = {}
    for r in records:
        row = by_label.setdefault(r.label, {"requests": 0, "ok": 0, "fallbacks": 0})
        row["requests"] += 1
        row["ok"] += r.ok
        row["fallbacks"] += r.ok and r.fallback
    return {
        "duration_s": round(duration_s, 1),
        "requests": len(records),
        "ok": ok,
        "failed": len(failed),
        "failed_pinned": sum(1 for r in failed if r.label == "pinned"),
        "fallbacks": sum(1 for r in records if r.ok and r.fallback),
        "skipped_arrivals": skipped,
        "served_by": dict(served.most_common()),
        "by_preference": by_label,
        "incidents": [res.to_json() for res in results],
        "all_incidents_handled": bool(results)
        and not interrupted
        and incidents_not_run == 0
        and all(res.passed and not res.cut_short for res in results),
        "interrupted": interrupted,
        "incidents_not_run": incidents_not_run,
        "pids": list(pids),
        "ports": list(ports),
        "dashboard": dashboard_url,
        "errors": list(errors),
    }


#: What the summary's words mean, in plain words (printed under the tables).
DEFINITIONS = (
    (
        "pinned",
        'requests that allow one provider only ("only": [that provider]), as a '
        "caller bound to one host by contract would send; when it fails they fail, since "
        "the caller forbade any other, and they are what keeps testing a failed provider",
    ),
    (
        "detected",
        "time from the incident's start until the router first marked one of "
        "the provider's endpoints as anything but healthy (degraded, ejected or probing)",
    ),
    (
        "routed around",
        "time from the incident's start until traffic left the provider "
        "for good: after it, for the rest of the incident, at most 2% of requests the "
        "router chose a provider for went first to the failing one (5% of latency-sorted "
        "requests to the slow one)",
    ),
    (
        "recovered",
        "time from the incident's end until the router showed every endpoint "
        "of the provider healthy again; a degraded endpoint gets little traffic, so its "
        "slow samples age out first (30 s by default), and an ejected one must pass probes; "
        '"not yet" means the run ended first',
    ),
    (
        "probes",
        "requests the router deliberately sent first to an ejected provider to "
        "test it (half-open); not counted against routing around",
    ),
)


def _secs(value: float | None, missing: str, *, cut_short: bool = False) -> str:
    if value is None and cut_short:
        return "[yellow]cut short[/]"  # not a failure: the run ended before it could be
    return f"[red]{missing}[/]" if value is None else f"{value:.1f} s"


def _verdict(summary: dict[str, Any]) -> str:
    """The last line: a judgement only over incidents that ran to their planned end."""
    incidents = summary["incidents"]
    judged = [inc for inc in incidents if not inc.get("cut_short")]
    lines = []
    if summary.get("interrupted"):
        cut = len(incidents) - len(judged)
        lines.append(
            f"[yellow]interrupted after {summary['duration_s']:.0f} s[/]: "
            f"{cut} incident(s) cut short, {summary.get('incidents_not_run', 0)} not run; "
            "neither is judged"
        )
    if not judged:
        lines.append("[yellow]no incident ran to its end[/]")
    elif all(inc["detected"] and inc["routed_around"] for inc in judged):
        every = (
            "every incident that ran to its end" if summary.get("interrupted") else "every incident"
        )
        lines.append(f"[green]{every} was detected and routed around[/]")
    else:
        lines.append("[red]some incident was not detected or not routed around[/]")
    return "\n".join(lines)


def print_summary(summary: dict[str, Any], console: Console, *, as_json: bool = False) -> None:
    """Human tables and definitions; then, if ``as_json``, the machine-readable JSON line."""
    console.print()
    console.print(
        f"[bold]router-demo summary[/] ({summary['duration_s']:.0f} s): "
        f"{summary['requests']} requests, {summary['ok']} ok, "
        f"{summary['failed']} failed ({summary['failed_pinned']} of them pinned), "
        f"{summary['fallbacks']} answered after a fallback"
    )
    table = Table(title="Incidents", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("incident", "window", "detected", "routed around", "recovered", "probes"):
        table.add_column(col, justify="left" if col in ("incident", "window") else "right")
    for inc in summary["incidents"]:
        window = (
            f"{inc['start_s']:.0f}–{inc['end_s']:.0f} s"
            if inc["start_s"] is not None and inc["end_s"] is not None
            else "not run"
        )
        table.add_row(
            inc["description"],
            window,
            _secs(inc["detected_after_s"], "NOT detected", cut_short=inc.get("cut_short", False)),
            _secs(
                inc["routed_around_after_s"],
                "NOT routed around",
                cut_short=inc.get("cut_short", False),
            ),
            _secs(inc["recovered_after_s"], "not yet"),
            str(inc["probe_first_attempts"]),
        )
    console.print(table)
    served = Table(title="Served by", title_justify="left", box=box.SIMPLE_HEAD)
    served.add_column("provider")
    served.add_column("answers", justify="right")
    for provider, n in summary["served_by"].items():
        served.add_row(provider, str(n))
    prefs = Table(title="By preference", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("preference", "requests", "ok", "fallbacks"):
        prefs.add_column(col, justify="right" if col != "preference" else "left")
    for label, row in sorted(summary["by_preference"].items()):
        prefs.add_row(label, str(row["requests"]), str(row["ok"]), str(row["fallbacks"]))
    console.print(served)
    console.print(prefs)
    words = Table.grid(padding=(0, 1, 0, 2))
    words.add_column(style="bold", no_wrap=True)
    words.add_column()
    for word, meaning in DEFINITIONS:
        words.add_row(f"{word}:", Text(f"{meaning}."))  # Text: no markup in the meaning
    console.print("[bold]What the words mean[/]")
    console.print(words, highlight=False)
    for err in summary["errors"]:
        console.print(f"[yellow]warning:[/] {err}")
    console.print(_verdict(summary))
    if as_json:
        # Plain print, not rich: no wrapping or markup may touch the JSON line.
        print(json.dumps({SUMMARY_KEY: summary}, separators=(",", ":")), flush=True)
