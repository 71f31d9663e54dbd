"""Translation between router.v1 protobuf messages and domain objects.

Kept apart from the servicer so the mapping (optional fields, field names in
error messages) is tested directly and reused by the metrics API; the enum
tables both processes need are in ``router_common.wire_enums``. Unknown enum
numbers are rejected here, naming the field, because proto3 enums are open
and a newer client may send values this server does not know.
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping

from router_common.catalog_model import Endpoint, Provider
from router_common.domain import EndpointKey
from router_common.limits import MAX_MODEL_ID_LEN, MAX_TOKENS
from router_common.pb import router_pb2
from router_common.routing.validation import (
    PreferencesError,
    check_known_providers,
    validate_preferences,
)
from router_common.wire_enums import (
    PERCENTILE_FROM_WIRE,
    PERCENTILE_TO_WIRE,
    SORT_FROM_WIRE,
    SORT_TO_WIRE,
)
from router_service.model import EndpointStats, HealthState, HealthView, MetricSummary, Uptime
from router_service.ranking import RankingInputError, RankingResult, RoutingRequest

#: Strategies whose entries carry weights a client redraws its order with.
_WEIGHTED_STRATEGIES = frozenset({"load_balance", "sort"})

HEALTH_TO_WIRE: dict[HealthState, router_pb2.HealthState] = {
    HealthState.HEALTHY: router_pb2.HEALTH_STATE_HEALTHY,
    HealthState.DEGRADED: router_pb2.HEALTH_STATE_DEGRADED,
    HealthState.EJECTED: router_pb2.HEALTH_STATE_EJECTED,
    HealthState.PROBING: router_pb2.HEALTH_STATE_PROBING,
}


#: Domain field names of RoutingRequest -> their path in RankProvidersRequest, so
#: an error raised by the ranking's own checks still names the proto field.
PROTO_PATHS = {
    "model": "model",
    "sort": "preferences.sort",
    "percentile": "preferences.percentile",
    "order": "preferences.order",
    "only": "preferences.only",
    "ignore": "preferences.ignore",
    "max_input_price": "preferences.max_price.input_per_million",
    "max_output_price": "preferences.max_price.output_per_million",
    "preferred_max_ttft_ms": "preferences.preferred_max_ttft_ms",
    "preferred_min_tps": "preferences.preferred_min_tps",
    "allow_fallbacks": "preferences.allow_fallbacks",
    "input_tokens": "estimated_input_tokens",
    "max_output_tokens": "max_output_tokens",
}

COST_BASIS_TO_WIRE: dict[str, router_pb2.CostBasis] = {
    "request": router_pb2.COST_BASIS_PER_REQUEST,
    "blended_per_mtok": router_pb2.COST_BASIS_BLENDED_PER_MILLION_TOKENS,
}


def proto_path(field: str) -> str:
    """The RankProvidersRequest path of a RoutingRequest field (unchanged if already one)."""
    return PROTO_PATHS.get(field, field)


def routing_request(
    msg: router_pb2.RankProvidersRequest, providers: Container[str] | None = None
) -> RoutingRequest:
    """Build a RoutingRequest; RankingInputError names any bad field by its proto path.

    ``providers``: the catalog's provider names; when given, a name in
    order/only/ignore outside it is refused.
    """
    # The proto's limit on `model` is checked before the catalog lookup, so a
    # model id no catalog can hold is INVALID_ARGUMENT, not NOT_FOUND.
    model_len = len(msg.model)
    if not 1 <= model_len <= MAX_MODEL_ID_LEN:
        raise RankingInputError(
            "model", f"must be 1..{MAX_MODEL_ID_LEN} characters, got {model_len}"
        )
    prefs = msg.preferences
    try:  # the rules the sidecar applies too, whatever its ranking source
        validate_preferences(prefs)
        if providers is not None:
            check_known_providers(prefs, providers)
    except PreferencesError as exc:
        raise RankingInputError(exc.field, exc.message) from None
    for field in ("estimated_input_tokens", "max_output_tokens"):
        value = getattr(msg, field)
        if not 0 <= value <= MAX_TOKENS:
            raise RankingInputError(field, f"must be within [0, {MAX_TOKENS}], got {value}")
    max_price = prefs.max_price
    return RoutingRequest(
        model=msg.model,
        sort=SORT_FROM_WIRE[prefs.sort],
        percentile=PERCENTILE_FROM_WIRE[prefs.percentile],
        order=tuple(prefs.order),
        only=frozenset(prefs.only) if prefs.only else None,
        ignore=frozenset(prefs.ignore),
        zero_data_retention=prefs.zero_data_retention,
        max_input_price=_optional(max_price, "input_per_million"),
        max_output_price=_optional(max_price, "output_per_million"),
        preferred_max_ttft_ms=_optional(prefs, "preferred_max_ttft_ms"),
        preferred_min_tps=_optional(prefs, "preferred_min_tps"),
        allow_fallbacks=prefs.allow_fallbacks if prefs.HasField("allow_fallbacks") else True,
        input_tokens=msg.estimated_input_tokens,
        max_output_tokens=msg.max_output_tokens,
    )


def _optional(msg, field: str) -> float | None:
    return getattr(msg, field) if msg.HasField(field) else None


def provider_info(provider: Provider) -> router_pb2.ProviderInfo:
    return router_pb2.ProviderInfo(
        name=provider.name,
        base_url=provider.base_url,
        api_key_env=provider.api_key_env,
        zero_data_retention=provider.zero_data_retention,
    )


def reason(code: str, detail: str, numbers) -> router_pb2.Reason:
    return router_pb2.Reason(
        code=code,
        detail=detail,
        numbers={k: float(v) for k, v in numbers.items() if math.isfinite(v)},
    )


def endpoint_template(endpoint: Endpoint) -> router_pb2.RankedEndpoint:
    """The catalog part of a RankedEndpoint, built once per catalog version.

    Copying a prebuilt message is about twice as fast as building the nested
    ProviderInfo from keyword arguments on every ranking (bench/bench_router.py).
    """
    return router_pb2.RankedEndpoint(
        provider=provider_info(endpoint.provider),
        upstream_model=endpoint.upstream_model,
        input_price_per_million=endpoint.input_price_per_mtok,
        output_price_per_million=endpoint.output_price_per_mtok,
    )


def rank_response(
    result: RankingResult,
    model: str,
    catalog_version: str,
    now: float,
    templates: Mapping[EndpointKey, router_pb2.RankedEndpoint] | None = None,
) -> router_pb2.RankProvidersResponse:
    """The wire form of a ranking, with its metadata block.

    ``templates`` (from endpoint_template, keyed by endpoint) is an optional
    cache of the catalog part of each entry.
    """
    response = router_pb2.RankProvidersResponse(model=model)
    meta = response.metadata
    meta.strategy = result.strategy
    meta.sort = SORT_TO_WIRE[result.sort]
    meta.percentile = PERCENTILE_TO_WIRE[result.percentile]
    meta.panic = result.panic
    meta.exploration = result.exploration
    if result.exploration_share:
        meta.exploration_share = result.exploration_share
    meta.catalog_version = catalog_version
    meta.ranked_at = now
    cost_basis = COST_BASIS_TO_WIRE[result.cost_basis]
    for item in result.ranked:
        endpoint: Endpoint = item.endpoint
        template = templates.get(endpoint.key) if templates is not None else None
        out = response.endpoints.add()
        out.CopyFrom(template if template is not None else endpoint_template(endpoint))
        out.estimated_cost_usd = item.cost_usd
        out.cost_basis = cost_basis
        out.window = item.window
        out.ttft_samples = item.ttft_samples
        out.tps_samples = item.tps_samples
        out.health = HEALTH_TO_WIRE[item.health]
        if item.exploration:
            out.exploration = True
        if item.ttft_ms is not None:
            out.ttft_ms = item.ttft_ms
        if item.tps is not None:
            out.tokens_per_second = item.tps
        if item.uptime is not None:
            out.uptime_1h = item.uptime
        if item.weight is not None and result.strategy in _WEIGHTED_STRATEGIES:
            out.weight = item.weight
        if item.explorable:
            out.explorable = True
            if item.exploration_weight is not None:
                out.exploration_weight = item.exploration_weight
        if item.first_token_timeout_ms is not None:
            out.first_token_timeout_ms = item.first_token_timeout_ms
        if item.hedge_after_ms is not None:
            out.hedge_after_ms = item.hedge_after_ms
        if item.deprioritized is not None:
            why = item.deprioritized
            out.deprioritized.CopyFrom(reason(why.code, why.detail, why.numbers))
            meta.deprioritized.add(provider=endpoint.provider.name, reason=out.deprioritized)
        meta.execution_order.append(endpoint.provider.name)
    for excluded in result.excluded:
        why = excluded.reason
        meta.excluded.add(
            provider=excluded.endpoint.provider.name,
            reason=reason(why.code, why.detail, why.numbers),
        )
    return response


def percentiles(summary: MetricSummary) -> router_pb2.Percentiles:
    out = router_pb2.Percentiles(samples=summary.count)
    p50, p95 = summary.get(0.5), summary.get(0.95)
    if p50 is not None:
        out.p50 = p50
    if p95 is not None:
        out.p95 = p95
    return out


def uptime_window(uptime: Uptime) -> router_pb2.UptimeWindow:
    out = router_pb2.UptimeWindow(attempts=uptime.attempts, failures=uptime.failures)
    if uptime.ratio is not None:
        out.ratio = uptime.ratio
    return out


def endpoint_health(endpoint: Endpoint, view: HealthView) -> router_pb2.EndpointHealth:
    out = router_pb2.EndpointHealth(
        provider=endpoint.provider.name,
        model=endpoint.model,
        state=HEALTH_TO_WIRE[view.state],
        reason=view.reason,
        since=view.since,
        consecutive_failures=view.consecutive_failures,
    )
    if view.ejected_until is not None and view.state is HealthState.EJECTED:
        out.ejected_until = view.ejected_until
    return out


def endpoint_metrics(
    endpoint: Endpoint, stats: EndpointStats, view: HealthView
) -> router_pb2.EndpointMetrics:
    return router_pb2.EndpointMetrics(
        provider=provider_info(endpoint.provider),
        upstream_model=endpoint.upstream_model,
        input_price_per_million=endpoint.input_price_per_mtok,
        output_price_per_million=endpoint.output_price_per_mtok,
        latency_last_1h=percentiles(stats.ttft_1h),
        throughput_last_1h=percentiles(stats.tps_1h),
        uptime_last_15m=uptime_window(stats.uptime_15m),
        uptime_last_1h=uptime_window(stats.uptime_1h),
        uptime_last_1d=uptime_window(stats.uptime_1d),
        health=endpoint_health(endpoint, view),
    )
