"""Per-endpoint facts and reasons: precomputed catalog rows, metric windows, health reasons.

Kept apart from the ordering so that each reason code is produced in exactly
one place, with its human sentence and the numbers behind it. The hard
filters are the sidecar's too, so they live in ``router_common.routing.filters``.
"""

from __future__ import annotations

from typing import NamedTuple

from router_common.catalog_model import Endpoint, Model
from router_common.domain import EndpointKey
from router_common.routing import reasons as rc
from router_common.routing.reasons import Reason
from router_service.model import HealthState, HealthView, MetricSummary
from router_service.ranking import result as r


class Prep(NamedTuple):
    """What ranking reads of one catalog endpoint, flattened once per model."""

    position: int  # in the catalog's list ("index" would shadow tuple.index)
    endpoint: Endpoint
    key: EndpointKey
    provider: str
    zdr: bool
    input_price: float
    output_price: float


_PREP_CACHE: dict[int, tuple[Model, tuple[Prep, ...]]] = {}
_PREP_CACHE_MAX = 4096


def prepare(model: Model) -> tuple[Prep, ...]:
    """Endpoint keys and prices per model, computed once (EndpointKey creation is not free).

    Keyed by ``id(model)`` and checked with ``is``: the cache holds a strong
    reference, so the id cannot be recycled while the entry exists; a reloaded
    catalog brings new Model objects and simply misses. Bounded by clearing.
    """
    hit = _PREP_CACHE.get(id(model))
    if hit is not None and hit[0] is model:
        return hit[1]
    prep = tuple(
        Prep(
            i,
            e,
            e.key,
            e.provider.name,
            bool(e.provider.zero_data_retention),
            float(e.input_price_per_mtok),
            float(e.output_price_per_mtok),
        )
        for i, e in enumerate(model.endpoints)
    )
    if len(_PREP_CACHE) >= _PREP_CACHE_MAX:
        _PREP_CACHE.clear()
    _PREP_CACHE[id(model)] = (model, prep)
    return prep


def pct(q: float) -> str:
    """0.9 -> "p90", for human details."""
    return f"p{round(q * 100)}"


def pick(
    m5: MetricSummary, m1h: MetricSummary, q: float, min5: int, min1h: int
) -> tuple[float | None, str, int]:
    """(value, window, samples): 5m if it has enough samples, else 1h, else no data.

    With no data the sample count is the larger window's, so the metadata can
    say "3 samples" rather than a bare "none".
    """
    c5 = m5.count
    if c5 >= min5:
        v = m5.quantiles.get(q)
        if v is not None and v == v:  # v == v rejects NaN
            return v, r.WINDOW_5M, c5
    c1 = m1h.count
    if c1 >= min1h:
        v = m1h.quantiles.get(q)
        if v is not None and v == v:
            return v, r.WINDOW_1H, c1
    return None, r.WINDOW_NONE, max(c5, c1)


def health_numbers(hv: HealthView, now: float) -> dict[str, float]:
    """The health facts worth showing: failures in a row, how long ago, how long still out.

    An ejection carries both ``ejected_until`` (Unix seconds, the number the
    proto names for the ``ejected`` code and GetHealth's field of that name)
    and ``ejected_for_s`` (the seconds still to go, for a human reading it).
    """
    nums: dict[str, float] = {"consecutive_failures": float(hv.consecutive_failures)}
    if hv.last_failure_at is not None:
        nums["last_failure_age_s"] = round(now - hv.last_failure_at, 3)
    if hv.ejected_until is not None:
        nums["ejected_until"] = hv.ejected_until
        nums["ejected_for_s"] = round(max(0.0, hv.ejected_until - now), 3)
    return nums


def unhealthy_reason(hv: HealthView, now: float, panic: bool) -> Reason:
    """Reason for an EJECTED / permit-less PROBING endpoint (excluded, or kept by panic)."""
    why = f": {hv.reason}" if hv.reason else ""
    if hv.state is HealthState.EJECTED:
        code, text = rc.EJECTED, f"ejected{why}"
    else:
        code, text = rc.PROBE_UNAVAILABLE, f"probing with no free probe permit{why}"
    if panic:
        text += "; returned anyway because every candidate is unhealthy (panic)"
    return Reason(code, text, health_numbers(hv, now))


def probing_reason(hv: HealthView, now: float) -> Reason:
    return Reason(
        rc.PROBING,
        "half-open after an ejection: routed as a probe, after the healthy endpoints"
        + (f" ({hv.reason})" if hv.reason else ""),
        health_numbers(hv, now),
    )


def degraded_reason(hv: HealthView, now: float, ttft_ms: float | None) -> Reason:
    nums = health_numbers(hv, now)
    if ttft_ms is not None:
        nums["ttft_ms"] = ttft_ms
    return Reason(rc.DEGRADED, "degraded" + (f": {hv.reason}" if hv.reason else ""), nums)


def no_data_reason(metric: str, samples: int, min5: int, min1h: int) -> Reason:
    return Reason(
        rc.NO_DATA_FOR_SORT,
        f"no {metric} data: {samples} samples, need {min5} in 5m or {min1h} in 1h",
        {"samples": float(samples), "min_samples": float(min5)},
    )


def ttft_reason(ttft: float, window: str, samples: int, pref: float, q: float) -> Reason:
    return Reason(
        rc.TTFT_ABOVE_PREFERRED,
        f"{pct(q)} TTFT {ttft:.0f} ms ({window}, {samples} samples) above preferred {pref:g} ms",
        {
            "ttft_ms": ttft,
            "preferred_max_ttft_ms": float(pref),
            "percentile": q,
            "samples": float(samples),
        },
    )


def tps_reason(tps: float, window: str, samples: int, pref: float, q: float) -> Reason:
    return Reason(
        rc.TPS_BELOW_PREFERRED,
        f"{pct(q)} throughput {tps:.1f} tok/s ({window}, {samples} samples) below preferred"
        f" {pref:g} tok/s",
        {"tps": tps, "preferred_min_tps": float(pref), "percentile": q, "samples": float(samples)},
    )
