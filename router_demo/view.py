"""What the demo shows while it runs: a rich Live view, or plain lines for CI.

Per model, one row per endpoint: where the router ranked it for a cost-sorted
and a TTFT-sorted request (the ``execution_order`` of the latest such answer,
i.e. the router's real decision, not a re-computation), its P50/P95 TTFT and
throughput over the last hour (``GetModelEndpoints``), its health with the
router's reason, and the share of answers it served over the last 10 s. Rows
are in TTFT-rank order, so a slowed-down provider visibly drops down the table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from rich.console import Group, JustifyMethod, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from router_demo.catalog import ProviderSpec
from router_demo.incidents import IncidentScript
from router_demo.monitor import HealthMonitor
from router_demo.traffic import RequestRecord, TrafficGenerator, share_by_provider

SHARE_WINDOW_S = 10.0
_STATE_STYLE = {
    "healthy": "green",
    "degraded": "yellow",
    "ejected": "bold red",
    "probing": "magenta",
}


@dataclass
class DemoView:
    """Renders the demo's state; holds references, never copies."""

    clock: Callable[[], float]
    duration_s: float | None
    models: Sequence[str]
    providers: Mapping[str, ProviderSpec]
    traffic: TrafficGenerator
    script: IncidentScript
    monitor: HealthMonitor
    dashboard_url: str
    sidecar_url: str
    log_dir: str

    # ---------------------------------------------------------------- numbers

    def counters(self) -> dict[str, int]:
        recs = self.traffic.records
        ok = sum(1 for r in recs if r.ok)
        return {
            "requests": len(recs),
            "ok": ok,
            "failed": len(recs) - ok,
            "fallbacks": sum(1 for r in recs if r.ok and r.fallback),
        }

    def recent_rps(self, window_s: float = 5.0) -> float:
        since = self.clock() - window_s
        return sum(1 for r in self.traffic.records[-2000:] if r.t >= since) / window_s

    @staticmethod
    def latest_order(records: Sequence[RequestRecord], model: str, label: str) -> tuple[str, ...]:
        for rec in reversed(records[-3000:]):
            if rec.model == model and rec.label == label and rec.execution_order:
                return rec.execution_order
        return ()

    def _incidents_text(self) -> str:
        active = self.script.active()
        return ", ".join(p.describe() for p in active) if active else "none"

    # ---------------------------------------------------------------- rich

    def header(self) -> Panel:
        c = self.counters()
        elapsed = self.clock()
        total = f" / {self.duration_s:.0f}" if self.duration_s else ""
        text = Text()
        text.append(f"elapsed {elapsed:5.1f}{total} s   ", style="bold")
        text.append(f"{self.recent_rps():.0f} req/s   ")
        text.append(f"requests {c['requests']}  ok {c['ok']}  ")
        text.append(f"failed {c['failed']}  ", style="red" if c["failed"] else "")
        text.append(f"fallbacks {c['fallbacks']}\n")
        text.append("active incidents: ")
        text.append(self._incidents_text(), style="bold red" if self.script.active() else "green")
        text.append("\ndashboard: ")
        text.append(self.dashboard_url, style="underline cyan")
        text.append(f"   sidecar: {self.sidecar_url}/v1/chat/completions   logs: {self.log_dir}")
        text.append("\nCtrl-C stops every process the demo started.", style="dim")
        return Panel(text, title="router-demo", border_style="blue")

    def model_table(self, model: str) -> Table:
        recs = self.traffic.records
        cost_order = self.latest_order(recs, model, "cost")
        ttft_order = self.latest_order(recs, model, "ttft")
        share = share_by_provider(recs, self.clock() - SHARE_WINDOW_S, model)
        resp = self.monitor.endpoints.get(model)
        table = Table(title=model, title_justify="left", expand=True, pad_edge=False)
        columns: tuple[tuple[str, JustifyMethod], ...] = (
            ("#ttft", "right"),
            ("#cost", "right"),
            ("provider", "left"),
            ("ZDR", "center"),
            ("$/M in/out", "right"),
            ("TTFT p50", "right"),
            ("p95", "right"),
            ("tok/s p50", "right"),
            ("p95", "right"),
            ("uptime 15m", "right"),
            ("health", "left"),
            (f"share {SHARE_WINDOW_S:.0f}s", "right"),
        )
        for col, justify in columns:
            # One line per endpoint: the health reason is cut to fit (the events panel and
            # the dashboard have it in full).
            # The health column takes what is left (ratio); the others keep their width.
            if col == "health":
                table.add_column(col, no_wrap=True, overflow="ellipsis", ratio=1, min_width=10)
            else:
                table.add_column(col, justify=justify, no_wrap=True, min_width=len(col))
        rows = []
        for ep in resp.endpoints if resp is not None else []:
            name = ep.provider.name
            state, reason = self.monitor.current.get((model, name), ("healthy", ""))
            rank_t = ttft_order.index(name) + 1 if name in ttft_order else None
            rank_c = cost_order.index(name) + 1 if name in cost_order else None
            lat, thr, up = ep.latency_last_1h, ep.throughput_last_1h, ep.uptime_last_15m
            health = Text(state, style=_STATE_STYLE.get(state, ""))
            if reason and state != "healthy":
                health.append(f" {reason}", style="dim")
            rows.append(
                (
                    rank_t if rank_t is not None else 99,
                    [
                        str(rank_t) if rank_t else "–",
                        str(rank_c) if rank_c else "–",
                        name,
                        "✓" if ep.provider.zero_data_retention else "",
                        f"{ep.input_price_per_million:.2f}/{ep.output_price_per_million:.2f}",
                        _num(lat.p50 if lat.HasField("p50") else None, "ms"),
                        _num(lat.p95 if lat.HasField("p95") else None, "ms"),
                        _num(thr.p50 if thr.HasField("p50") else None, ""),
                        _num(thr.p95 if thr.HasField("p95") else None, ""),
                        f"{up.ratio * 100:.1f}%" if up.HasField("ratio") else "–",
                        health,
                        f"{share.get(name, 0.0) * 100:4.0f}%",
                    ],
                )
            )
        for _rank, cells in sorted(rows, key=lambda r: r[0]):
            table.add_row(*cells)
        return table

    def events(self, limit: int = 6) -> Panel:
        items: list[tuple[float, Text]] = []
        for i, plan in enumerate(self.script.plans):
            if i in self.script.started:
                items.append((self.script.started[i], Text(f"incident: {plan.describe()}", "red")))
            if i in self.script.ended:
                items.append((self.script.ended[i], Text(f"incident over: {plan.describe()}")))
        for tr in self.monitor.transitions:
            style = _STATE_STYLE.get(tr.to_state, "")
            items.append(
                (
                    tr.t,
                    Text(f"{tr.provider} | {tr.model}: {tr.from_state} → ", style="")
                    + Text(tr.to_state, style=style)
                    + Text(f"  {tr.reason}", style="dim"),
                )
            )
        items.sort(key=lambda x: x[0])
        lines = [Text(f"{t:6.1f}s  ") + txt for t, txt in items[-limit:]] or [Text("…")]
        return Panel(Group(*lines), title="events", border_style="dim")

    def render(self) -> RenderableType:
        return Group(self.header(), *(self.model_table(m) for m in self.models), self.events())

    # ---------------------------------------------------------------- plain

    def status_line(self) -> str:
        """One line for logs: counters, incidents, and every endpoint that is not healthy."""
        c = self.counters()
        unhealthy = [
            f"{p}|{m}={st}"
            for (m, p), (st, _reason) in sorted(self.monitor.current.items())
            if st != "healthy"
        ]
        return (
            f"[router-demo] t={self.clock():5.1f}s req={c['requests']} ok={c['ok']} "
            f"failed={c['failed']} fallbacks={c['fallbacks']} "
            f"rps={self.recent_rps():.0f} incidents=[{self._incidents_text()}] "
            f"not-healthy=[{', '.join(unhealthy) or 'none'}]"
        )


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}{unit}" if value >= 10 else f"{value:.1f}{unit}"
