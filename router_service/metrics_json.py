"""The JSON documents of the router's metrics API, built from RouterCore state.

Why pure functions: the HTTP handlers only serialise what these return, so the
shapes and the "not enough data" rule are tested without sockets, and the
dashboard, the API and its tests agree on one definition.

Shapes follow Vercel AI Gateway's endpoints API (``latency_last_1h`` and
``throughput_last_1h`` with ``p50``/``p95``, in ms and tokens/s), so tools
written against it read ours:

* ``GET /v1/models`` → :func:`models_document`
* ``GET /v1/models/{creator}/{name}/endpoints`` → :func:`endpoints_document`
* ``GET /v1/models/{creator}/{name}/timeseries?range=5m|15m|1h`` → :func:`timeseries_document`
  (10-second points for 5 and 15 minutes, one-minute points for the hour,
  from :mod:`router_service.dashboard_series`)

Too few samples (``router_service.figures``): every rolling figure needs
:data:`MIN_SAMPLES` observations in its window; below that it is ``null``,
``enough_data`` is false, and the dashboard prints "not enough data". The raw
counts are always given, so a reader can see why a figure is missing.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from router_common.catalog_model import Endpoint, Model
from router_service.core import RouterCore
from router_service.dashboard_series import RANGES
from router_service.figures import MIN_SAMPLES, best_p50s, best_p95_ttft
from router_service.health import Transition
from router_service.model import (
    EndpointStats,
    HealthState,
    HealthView,
    MetricSummary,
    Uptime,
    rounded_ratio,
)
from router_service.prometheus import ENDPOINTS_PER_SLICE

#: Health transitions returned with a model's endpoints (most recent last).
TRANSITIONS_SHOWN = 20

JSON = dict[str, Any]


def _num(value: float | None, digits: int = 3) -> float | None:
    """Round for display and map non-finite values to null (JSON has no NaN)."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def percentiles(summary: MetricSummary) -> JSON | None:
    """``{"p50", "p95"}`` of one metric, or None below MIN_SAMPLES."""
    if summary.count < MIN_SAMPLES:
        return None
    p50, p95 = _num(summary.get(0.5)), _num(summary.get(0.95))
    if p50 is None or p95 is None:
        return None
    return {"p50": p50, "p95": p95}


def uptime_ratio(uptime: Uptime) -> float | None:
    """Success ratio of a window, or None below MIN_SAMPLES attempts."""
    if uptime.attempts < MIN_SAMPLES:
        return None
    return rounded_ratio(uptime.successes, uptime.attempts)


def endpoint_document(endpoint: Endpoint, stats: EndpointStats, view: HealthView) -> JSON:
    """One provider's row: price, data policy, last-hour metrics, uptime and health."""
    latency = percentiles(stats.ttft_1h)
    throughput = percentiles(stats.tps_1h)
    return {
        "name": str(endpoint.key),
        "provider_name": endpoint.provider.name,
        "upstream_model": endpoint.upstream_model,
        "pricing": {
            "input_per_million": endpoint.input_price_per_mtok,
            "output_per_million": endpoint.output_price_per_mtok,
        },
        "zero_data_retention": endpoint.provider.zero_data_retention,
        "latency_last_1h": latency,
        "throughput_last_1h": throughput,
        "sample_size_last_1h": stats.ttft_1h.count,
        "throughput_sample_size_last_1h": stats.tps_1h.count,
        "latency_last_5m": percentiles(stats.ttft_5m),
        "throughput_last_5m": percentiles(stats.tps_5m),
        "sample_size_last_5m": stats.ttft_5m.count,
        "uptime_last_15m": uptime_ratio(stats.uptime_15m),
        "uptime_last_1h": uptime_ratio(stats.uptime_1h),
        "uptime_last_1d": uptime_ratio(stats.uptime_1d),
        "attempts": {
            "last_15m": stats.uptime_15m.attempts,
            "last_1h": stats.uptime_1h.attempts,
            "last_1d": stats.uptime_1d.attempts,
        },
        "enough_data": latency is not None,
        "last_sample_at": _num(stats.last_sample_at),
        "status": view.state.value,
        "observed": is_observed(stats, view),
        "status_reason": view.reason,
        "status_since": _num(view.since) if view.since else None,
        "ejected_until": _num(view.ejected_until),
        "consecutive_failures": view.consecutive_failures,
    }


def is_observed(stats: EndpointStats, view: HealthView) -> bool:
    """Whether the router has evidence about the endpoint: an attempt in the last hour,
    or a health state other than the default. An endpoint nobody called is "healthy"
    for ranking (innocent until proven otherwise) but the dashboard says "no data"."""
    return stats.uptime_1h.attempts > 0 or view.state is not HealthState.HEALTHY


def transition_document(transition: Transition) -> JSON:
    """One health state change, for the model page's event list."""
    return {
        "provider_name": transition.key.provider,
        "from": transition.from_state.value,
        "to": transition.to_state.value,
        "reason": transition.reason,
        "at": _num(transition.at),
    }


def endpoints_document(core: RouterCore, model: Model) -> JSON:
    """``/v1/models/{id}/endpoints``: every catalog endpoint of the model, in catalog order."""
    endpoints = [
        endpoint_document(e, core.store.stats(e.key), core.health.view(e.key))
        for e in model.endpoints
    ]
    keys = {e.key for e in model.endpoints}
    transitions = [t for t in core.health.transitions() if t.key in keys][-TRANSITIONS_SHOWN:]
    return {
        "data": {
            "id": model.id,
            "object": "model",
            "owned_by": model.id.split("/", 1)[0],
            "min_samples": MIN_SAMPLES,
            "generated_at": _num(core.clock()),
            "catalog_version": core.catalog_version,
            "endpoints": endpoints,
            "health_events": [transition_document(t) for t in transitions],
        }
    }


def model_summary(core: RouterCore, model: Model) -> JSON:
    """One row of the model list: best P50 TTFT (lowest) and throughput (highest)."""
    # Each endpoint's stats read once (a store read builds its summaries), then shared.
    stats_by_key = {e.key: core.store.stats(e.key) for e in model.endpoints}
    best_ttft, best_tps = best_p50s(model, stats_by_key.__getitem__)
    best_p95 = best_p95_ttft(model, stats_by_key.__getitem__)
    status_counts: dict[str, int] = {}
    for endpoint in model.endpoints:
        view = core.health.view(endpoint.key)
        observed = is_observed(stats_by_key[endpoint.key], view)
        state = view.state.value if observed else "no_data"
        status_counts[state] = status_counts.get(state, 0) + 1
    cheapest = min(model.endpoints, key=lambda e: e.input_price_per_mtok + e.output_price_per_mtok)
    return {
        "id": model.id,
        "object": "model",
        "owned_by": model.id.split("/", 1)[0],
        "endpoint_count": len(model.endpoints),
        "providers": [e.provider.name for e in model.endpoints],
        "best_p50_ttft_ms": _num(best_ttft.value) if best_ttft else None,
        "best_p50_ttft_provider": best_ttft.provider if best_ttft else None,
        "best_p95_ttft_ms": _num(best_p95.value) if best_p95 else None,
        "best_p95_ttft_provider": best_p95.provider if best_p95 else None,
        "best_p50_throughput": _num(best_tps.value) if best_tps else None,
        "best_p50_throughput_provider": best_tps.provider if best_tps else None,
        "cheapest": {
            "provider_name": cheapest.provider.name,
            "input_per_million": cheapest.input_price_per_mtok,
            "output_per_million": cheapest.output_price_per_mtok,
        },
        "status_counts": status_counts,
    }


def models_document(core: RouterCore, rows: list[JSON] | None = None) -> JSON:
    """``/v1/models``: every catalog model, in catalog order, with its best P50s.

    ``rows``: the models' rows already built from the current catalog
    (:func:`models_document_in_slices`); built here when None.
    """
    if rows is None:
        rows = [model_summary(core, m) for m in core.catalog.models.values()]
    return {
        "object": "list",
        "min_samples": MIN_SAMPLES,
        "generated_at": _num(core.clock()),
        "catalog_version": core.catalog_version,
        "data": rows,
    }


async def models_document_in_slices(core: RouterCore) -> JSON:
    """:func:`models_document`, yielding to the event loop every ``ENDPOINTS_PER_SLICE``.

    Why: a row costs ~5 µs per endpoint (each endpoint's summaries are read), so a
    catalog of 10,000 endpoints held the router's one loop for ~50 ms per request,
    and RankProviders waited behind the dashboard's model list. A catalog replaced
    while the rows were built (a reload) starts the list over, so every row, and
    the version, come from one catalog.
    """
    while True:
        catalog = core.catalog
        rows: list[JSON] = []
        since_yield = 0
        for model in catalog.models.values():
            rows.append(model_summary(core, model))
            since_yield += len(model.endpoints)
            if since_yield >= ENDPOINTS_PER_SLICE:
                since_yield = 0
                await asyncio.sleep(0)  # RankProviders and ingestion run here
        if core.catalog is catalog:
            return models_document(core, rows)


async def timeseries_document(core: RouterCore, model: Model, range_name: str = "15m") -> JSON:
    """``/v1/models/{id}/timeseries?range=``: per provider, oldest point first.

    Each point has attempts, failures, uptime, TTFT and throughput P50/P95
    (null with fewer than MIN_SAMPLES successes in the bucket, so the chart
    never plots what the table calls "not enough data") and ``health``: the
    worst state the endpoint was in during the bucket, or ``no_data`` when it
    had no attempts and nothing was wrong.
    """
    spec = RANGES[range_name]
    # Health states first, then the series (its lock, or the sketch worker's answer).
    wanted = [(e.key, core.health.view(e.key).state) for e in model.endpoints]
    points = await core.series.points_of(wanted, range_name, MIN_SAMPLES)
    series = [
        {"provider_name": e.provider.name, "points": p}
        for e, p in zip(model.endpoints, points, strict=True)
    ]
    return {
        "data": {
            "id": model.id,
            "window": spec.name,
            "ranges": list(RANGES),
            "bucket_seconds": spec.width,
            "min_samples": MIN_SAMPLES,
            "generated_at": _num(core.clock()),
            "series": series,
        }
    }


def not_found_document(message: str) -> JSON:
    """The error body of every 404 under /v1 (OpenAI-style ``error`` object)."""
    return {"error": {"message": message, "type": "not_found"}}
