"""Prometheus exposition of the router, read from RouterCore at scrape time.

Why read at scrape time instead of instrumented Gauges: the numbers already live
in the core (cached quantiles, health views, counters), so reading them costs
nothing on the hot path and can never drift from what ranking and the JSON API
see. The per-endpoint families (``router_endpoint_*``, ~20 series per catalog
endpoint) are written by :class:`EndpointExposition` in slices, yielding to the
event loop between them, because one synchronous rendering of a large catalog
stalled ranking (1.3 s per scrape at 10,000 endpoints); the few other families
come from :class:`RouterCollector` in a per-app ``CollectorRegistry`` (never the
process-global one), so several routers can run in one process (the tests do).

Names follow the Prometheus conventions: one ``router_`` prefix, base units
(seconds, not ms), ``_total`` on counters, ``_ratio`` for 0..1, ``_info`` for
a constant 1 carrying labels, and the enum pattern for health (one series per
state, 1 for the current one). Label values come from the catalog and fixed
enums only, never from caller input, so cardinality is bounded by the catalog.

==============================================  =======  ====================================
metric                                          type     labels
==============================================  =======  ====================================
router_endpoint_ttft_seconds                    gauge    model, provider, window, quantile
router_endpoint_throughput_tokens_per_second    gauge    model, provider, window, quantile
router_endpoint_samples                         gauge    model, provider, window, metric
router_endpoint_attempts                        gauge    model, provider, window
router_endpoint_uptime_ratio                    gauge    model, provider, window
router_endpoint_health_state                    gauge    model, provider, state
router_endpoint_consecutive_failures            gauge    model, provider
router_outcomes_total                           counter  error_class
router_outcomes_rejected_total                  counter  field
router_rpc_requests_total                       counter  method, code
router_ingest_busy_seconds_total                counter
router_ingest_paced_seconds_total               counter
router_ingest_refresh_seconds_total             counter
router_sketch_worker_up                         gauge    (only with the sketch worker)
router_catalog_info                             gauge    version
router_catalog_reload_refused                   gauge
router_catalog_models / router_catalog_endpoints gauge
==============================================  =======  ====================================

Windows: quantiles are exported for ``5m`` (what ranking sorts by) and ``1h``
(what the API and dashboard show); uptime for ``15m``, ``1h`` and ``1d``.
A quantile or uptime series is present only once its window holds
``metrics_json.MIN_SAMPLES`` observations (the same rule as the API), while
the ``samples``/``attempts`` gauges are always present, so an absent
quantile is explained by a small count next to it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from router_common.domain import EndpointKey, ErrorClass
from router_common.pb import router_pb2
from router_service.core import RouterCore
from router_service.figures import MIN_SAMPLES
from router_service.grpc_api import RpcCounter
from router_service.model import RANKING_QUANTILES, HealthState, MetricSummary

#: ``field`` values of router_outcomes_rejected_total, each written even at 0 so an
#: alert on one has a series to watch; a field only the contract knows is added on sight.
OUTCOME_FIELDS = frozenset(f.name for f in router_pb2.Outcome.DESCRIPTOR.fields)

#: Endpoints rendered between two yields to the event loop (see EndpointExposition).
ENDPOINTS_PER_SLICE = 256
#: Sample lines per chunk of the answer (~100 bytes each).
LINES_PER_CHUNK = 4096

#: The per-endpoint families, in the order they are written: (name, help).
ENDPOINT_FAMILIES: tuple[tuple[str, str], ...] = (
    ("router_endpoint_ttft_seconds", "Time to first token quantiles over a rolling window."),
    (
        "router_endpoint_throughput_tokens_per_second",
        "Output tokens per second after the first token, quantiles over a rolling window.",
    ),
    (
        "router_endpoint_samples",
        "Observations of a metric (ttft, throughput) in a rolling window.",
    ),
    (
        "router_endpoint_attempts",
        "Upstream attempts counted for uptime in a rolling window (client errors excluded).",
    ),
    ("router_endpoint_uptime_ratio", "Successful attempts / attempts in a rolling window."),
    (
        "router_endpoint_health_state",
        "Health state of the endpoint: 1 for the current state, 0 for the others.",
    ),
    (
        "router_endpoint_consecutive_failures",
        "Failures in a row since the endpoint's last success.",
    ),
)
_QUANTILE_LABELS = tuple((q, repr(q)) for q in RANKING_QUANTILES)  # '0.5', '0.95'


def _label_value(value: str) -> str:
    """A label value escaped as the exposition formats require (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(value: float) -> str:
    """A sample value as Prometheus reads it (``repr`` of a finite float; +Inf, NaN)."""
    value = float(value)
    return repr(value) if math.isfinite(value) else floatToGoString(value)


class EndpointExposition:
    """The per-endpoint families (about 20 series per catalog endpoint), written as text
    directly and in slices, yielding to the event loop every ``ENDPOINTS_PER_SLICE``.
    Labels are written in name order, as prometheus_client writes them.

    Why not a Collector: prometheus_client renders each sample through name and label
    validation and escaping (~11 µs a sample), all in one synchronous call. With a catalog
    of 10,000 endpoints a scrape held the router's event loop for 1.3 s (1,000 endpoints:
    0.15 s), so every RankProviders call waited behind Prometheus. Here the label text of
    an endpoint is built once per catalog, and ranking runs between slices. The lines are
    the same in the text format and in OpenMetrics (gauges), so one rendering serves both.
    """

    def __init__(self, core: RouterCore) -> None:
        self._core = core
        self._catalog: object = None
        self._labels: dict[EndpointKey, str] = {}

    def _endpoint_labels(self) -> dict[EndpointKey, str]:
        """``model="…",provider="…"`` per endpoint, rebuilt when the catalog is replaced."""
        catalog = self._core.catalog
        if catalog is not self._catalog:
            self._catalog, self._labels = catalog, {}
        return self._labels

    async def render(self) -> list[bytes]:
        """The families' text in chunks (a few hundred kB each), in exposition order."""
        core = self._core
        catalog = core.catalog
        labels_of = self._endpoint_labels()
        ttft: list[str] = []
        tps: list[str] = []
        samples: list[str] = []
        attempts: list[str] = []
        uptime: list[str] = []
        health: list[str] = []
        consecutive: list[str] = []
        rendered = 0
        for model in catalog.models.values():
            for endpoint in model.endpoints:
                key = endpoint.key
                ep = labels_of.get(key)
                if ep is None:
                    ep = labels_of[key] = (
                        f'model="{_label_value(key.model)}",provider="{_label_value(key.provider)}"'
                    )
                stats = core.store.stats(key)
                for window, t_sum, p_sum in (
                    ("5m", stats.ttft_5m, stats.tps_5m),
                    ("1h", stats.ttft_1h, stats.tps_1h),
                ):
                    _quantile_lines(ttft, "router_endpoint_ttft_seconds", ep, window, t_sum, 1e-3)
                    _quantile_lines(
                        tps, "router_endpoint_throughput_tokens_per_second", ep, window, p_sum, 1.0
                    )
                    samples.append(
                        f'router_endpoint_samples{{metric="ttft",{ep},window="{window}"}} '
                        f"{_value(t_sum.count)}\n"
                    )
                    samples.append(
                        f'router_endpoint_samples{{metric="throughput",{ep},window="{window}"}} '
                        f"{_value(p_sum.count)}\n"
                    )
                for window, up in (
                    ("15m", stats.uptime_15m),
                    ("1h", stats.uptime_1h),
                    ("1d", stats.uptime_1d),
                ):
                    attempts.append(
                        f'router_endpoint_attempts{{{ep},window="{window}"}} '
                        f"{_value(up.attempts)}\n"
                    )
                    if up.attempts >= MIN_SAMPLES and up.ratio is not None:
                        uptime.append(
                            f'router_endpoint_uptime_ratio{{{ep},window="{window}"}} '
                            f"{_value(up.ratio)}\n"
                        )
                view = core.health.view(key)
                for state in HealthState:
                    health.append(
                        f'router_endpoint_health_state{{{ep},state="{state.value}"}} '
                        f"{'1.0' if view.state is state else '0.0'}\n"
                    )
                consecutive.append(
                    f"router_endpoint_consecutive_failures{{{ep}}} "
                    f"{_value(view.consecutive_failures)}\n"
                )
                rendered += 1
                if rendered % ENDPOINTS_PER_SLICE == 0:
                    await asyncio.sleep(0)  # RankProviders and ingestion run here
        # Joined and encoded a slice at a time too: one 10 MB join, encode and write was
        # itself a 60 ms stall.
        out: list[bytes] = []
        families = (ttft, tps, samples, attempts, uptime, health, consecutive)
        for (name, help_text), lines in zip(ENDPOINT_FAMILIES, families, strict=True):
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n".encode())
            for first in range(0, len(lines), LINES_PER_CHUNK):
                out.append("".join(lines[first : first + LINES_PER_CHUNK]).encode())
                await asyncio.sleep(0)
        return out


def _quantile_lines(
    out: list[str], name: str, ep: str, window: str, summary: MetricSummary, scale: float
) -> None:
    """One line per cached quantile, only once the window holds MIN_SAMPLES values."""
    if summary.count < MIN_SAMPLES:
        return
    for q, label in _QUANTILE_LABELS:
        value = summary.get(q)
        if value is not None:
            labels = f'{ep},quantile="{label}",window="{window}"'
            out.append(f"{name}{{{labels}}} {_value(value * scale)}\n")


class RouterCollector(Collector):
    """The router's other families (counters, catalog): read from the core at scrape time."""

    def __init__(self, core: RouterCore, rpc_counter: RpcCounter) -> None:
        self._core = core
        self._rpc = rpc_counter

    def describe(self) -> list:
        """Nothing to pre-declare: the series depend on the live catalog."""
        return []

    def collect(self) -> Iterator:
        core = self._core
        outcomes = CounterMetricFamily(
            "router_outcomes",
            "Outcomes accepted, by the error class the sidecar reported (none = success).",
            labels=["error_class"],
        )
        by_class = dict(core.outcomes_by_class)
        for error_class in ErrorClass:
            outcomes.add_metric([error_class.value], by_class.get(error_class.value, 0))
        yield outcomes
        rejected = CounterMetricFamily(
            "router_outcomes_rejected",
            "Outcomes refused at validation, by the Outcome field the rejection names "
            "(started_at: the sender's clock is off; provider/model: not in the catalog).",
            labels=["field"],
        )
        by_field = dict(core.outcomes_rejected_by_field)
        for name in sorted(OUTCOME_FIELDS | by_field.keys()):
            rejected.add_metric([name], by_field.get(name, 0))
        yield rejected
        rpcs = CounterMetricFamily(
            "router_rpc_requests",
            "Completed gRPC calls by method and status code name.",
            labels=["method", "code"],
        )
        for (method, code), count in sorted(dict(self._rpc.counts).items()):
            rpcs.add_metric([method, code], count)
        yield rpcs

        info = GaugeMetricFamily(
            "router_catalog_info", "The loaded catalog's version (constant 1).", labels=["version"]
        )
        info.add_metric([core.catalog_version], 1.0)
        yield info
        yield GaugeMetricFamily(
            "router_catalog_reload_refused",
            "1 while the catalog file was refused at its last reload (the previous catalog "
            "still serves; the log line 'catalog reload refused' says why), else 0.",
            value=0.0 if core.catalog_refused is None else 1.0,
        )
        yield GaugeMetricFamily(
            "router_catalog_models",
            "Models in the loaded catalog.",
            value=len(core.catalog.models),
        )
        yield GaugeMetricFamily(
            "router_catalog_endpoints",
            "Endpoints (model, provider) in the loaded catalog.",
            value=sum(len(m.endpoints) for m in core.catalog.models.values()),
        )


def build_registry(core: RouterCore, rpc_counter: RpcCounter) -> CollectorRegistry:
    """A private registry holding only this router's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(core, rpc_counter))
    return registry
