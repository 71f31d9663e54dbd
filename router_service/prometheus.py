"""Prometheus exposition of the router: a custom collector over RouterCore.

Why a collector instead of instrumented Gauges: the numbers already live in
the core (cached quantiles, health views, counters), so reading them at scrape
time costs nothing on the hot path and can never drift from what ranking and
the JSON API see. Each HTTP app gets its own ``CollectorRegistry`` (never the
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
router_outcomes_rejected_total                  counter
router_rpc_requests_total                       counter  method, code
router_ingest_busy_seconds_total                counter
router_ingest_paced_seconds_total               counter
router_catalog_info                             gauge    version
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

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from router_common.domain import ErrorClass
from router_service.core import RouterCore
from router_service.figures import MIN_SAMPLES
from router_service.grpc_api import RpcCounter
from router_service.model import RANKING_QUANTILES, HealthState, MetricSummary

EP_LABELS = ("model", "provider")


def _quantile_label(q: float) -> str:
    """'0.5', '0.95': the conventional spelling of a quantile label."""
    return repr(q)


class RouterCollector(Collector):
    """Reads the core at scrape time; holds no state of its own."""

    def __init__(self, core: RouterCore, rpc_counter: RpcCounter) -> None:
        self._core = core
        self._rpc = rpc_counter

    def describe(self) -> list:
        """Nothing to pre-declare: the series depend on the live catalog."""
        return []

    def collect(self) -> Iterator:
        core = self._core
        ttft = GaugeMetricFamily(
            "router_endpoint_ttft_seconds",
            "Time to first token quantiles over a rolling window.",
            labels=[*EP_LABELS, "window", "quantile"],
        )
        tps = GaugeMetricFamily(
            "router_endpoint_throughput_tokens_per_second",
            "Output tokens per second after the first token, quantiles over a rolling window.",
            labels=[*EP_LABELS, "window", "quantile"],
        )
        samples = GaugeMetricFamily(
            "router_endpoint_samples",
            "Observations of a metric (ttft, throughput) in a rolling window.",
            labels=[*EP_LABELS, "window", "metric"],
        )
        attempts = GaugeMetricFamily(
            "router_endpoint_attempts",
            "Upstream attempts counted for uptime in a rolling window (client errors excluded).",
            labels=[*EP_LABELS, "window"],
        )
        uptime = GaugeMetricFamily(
            "router_endpoint_uptime_ratio",
            "Successful attempts / attempts in a rolling window.",
            labels=[*EP_LABELS, "window"],
        )
        health = GaugeMetricFamily(
            "router_endpoint_health_state",
            "Health state of the endpoint: 1 for the current state, 0 for the others.",
            labels=[*EP_LABELS, "state"],
        )
        consecutive = GaugeMetricFamily(
            "router_endpoint_consecutive_failures",
            "Failures in a row since the endpoint's last success.",
            labels=list(EP_LABELS),
        )
        for model in core.catalog.models.values():
            for endpoint in model.endpoints:
                key = endpoint.key
                ep = [key.model, key.provider]
                stats = core.store.stats(key)
                for window, t_sum, p_sum in (
                    ("5m", stats.ttft_5m, stats.tps_5m),
                    ("1h", stats.ttft_1h, stats.tps_1h),
                ):
                    _add_quantiles(ttft, ep, window, t_sum, scale=1e-3)
                    _add_quantiles(tps, ep, window, p_sum, scale=1.0)
                    samples.add_metric([*ep, window, "ttft"], t_sum.count)
                    samples.add_metric([*ep, window, "throughput"], p_sum.count)
                for window, up in (
                    ("15m", stats.uptime_15m),
                    ("1h", stats.uptime_1h),
                    ("1d", stats.uptime_1d),
                ):
                    attempts.add_metric([*ep, window], up.attempts)
                    if up.attempts >= MIN_SAMPLES and up.ratio is not None:
                        uptime.add_metric([*ep, window], up.ratio)
                view = core.health.view(key)
                for state in HealthState:
                    health.add_metric([*ep, state.value], 1.0 if view.state is state else 0.0)
                consecutive.add_metric(ep, view.consecutive_failures)
        yield from (ttft, tps, samples, attempts, uptime, health, consecutive)

        outcomes = CounterMetricFamily(
            "router_outcomes",
            "Outcomes accepted, by the error class the sidecar reported (none = success).",
            labels=["error_class"],
        )
        by_class = dict(core.outcomes_by_class)
        for error_class in ErrorClass:
            outcomes.add_metric([error_class.value], by_class.get(error_class.value, 0))
        yield outcomes
        yield CounterMetricFamily(
            "router_outcomes_rejected",
            "Outcomes refused at validation (malformed, or an endpoint not in the catalog).",
            value=core.outcomes_rejected,
        )
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
            "router_catalog_models",
            "Models in the loaded catalog.",
            value=len(core.catalog.models),
        )
        yield GaugeMetricFamily(
            "router_catalog_endpoints",
            "Endpoints (model, provider) in the loaded catalog.",
            value=sum(len(m.endpoints) for m in core.catalog.models.values()),
        )


def _add_quantiles(
    family: GaugeMetricFamily, ep: list[str], window: str, summary: MetricSummary, scale: float
) -> None:
    """One series per cached quantile, only once the window holds MIN_SAMPLES values."""
    if summary.count < MIN_SAMPLES:
        return
    for q in RANKING_QUANTILES:
        value = summary.get(q)
        if value is not None:
            family.add_metric([*ep, window, _quantile_label(q)], value * scale)


def build_registry(core: RouterCore, rpc_counter: RpcCounter) -> CollectorRegistry:
    """A private registry holding only this router's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(core, rpc_counter))
    return registry
