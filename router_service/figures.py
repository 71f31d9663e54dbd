"""When a rolling figure is published, and a model's best figures: one rule for every API.

A percentile over a handful of values is noise (the P95 of three samples is
just their maximum), and an uptime of "100 %" after two requests says
nothing. So a window's figures are published only from :data:`MIN_SAMPLES`
observations on, and the same rule picks a model's best P50s, whether gRPC
``ListModels`` or HTTP ``/v1/models`` asks; the sidecar names them the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from router_common.catalog_model import Model
from router_common.domain import EndpointKey
from router_service.model import EndpointStats, MetricSummary

#: Observations a window needs before its percentiles or uptime are published.
MIN_SAMPLES = 5


class Best(NamedTuple):
    """The best value of one figure among a model's endpoints, and who has it."""

    value: float
    provider: str


class BestP50s(NamedTuple):
    """Lowest P50 TTFT (ms) and highest P50 throughput (tokens/s) over the last hour."""

    ttft_ms: Best | None
    tokens_per_second: Best | None


def quantile(summary: MetricSummary, q: float) -> float | None:
    """The q-quantile, or None below MIN_SAMPLES (or when it is not a finite number)."""
    if summary.count < MIN_SAMPLES:
        return None
    value = summary.get(q)
    return value if value is not None and value == value and abs(value) != float("inf") else None


def p50(summary: MetricSummary) -> float | None:
    """The median, or None below MIN_SAMPLES (or when it is not a finite number)."""
    return quantile(summary, 0.5)


def best_p50s(model: Model, stats_of: Callable[[EndpointKey], EndpointStats]) -> BestP50s:
    """The model's best P50s over the last hour, among endpoints with enough samples."""
    ttft: Best | None = None
    tps: Best | None = None
    for endpoint in model.endpoints:
        stats = stats_of(endpoint.key)
        name = endpoint.provider.name
        latency = p50(stats.ttft_1h)
        if latency is not None and (ttft is None or latency < ttft.value):
            ttft = Best(latency, name)
        throughput = p50(stats.tps_1h)
        if throughput is not None and (tps is None or throughput > tps.value):
            tps = Best(throughput, name)
    return BestP50s(ttft, tps)


def best_p95_ttft(model: Model, stats_of: Callable[[EndpointKey], EndpointStats]) -> Best | None:
    """The lowest P95 TTFT (ms) over the last hour, among endpoints with enough samples."""
    best: Best | None = None
    for endpoint in model.endpoints:
        latency = quantile(stats_of(endpoint.key).ttft_1h, 0.95)
        if latency is not None and (best is None or latency < best.value):
            best = Best(latency, endpoint.provider.name)
    return best
