"""Execution order: tiers, `order` providers, sort with near-tie shuffling, or load balance.

See ``router_service.ranking.core`` for the semantics and the weight formula.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from router_service.ranking.request import RankingConfig, Sort
from router_service.ranking.result import RankedEndpoint

#: Tiers, best first. ``order`` providers can only be in OK, DEGRADED or PROBING.
N_TIERS = 5
TIER_OK, TIER_SOFT, TIER_NODATA, TIER_DEGRADED, TIER_PROBING = range(N_TIERS)

_log = math.log

#: Row of per-candidate metrics: (ttft, ttft window, ttft samples, tps, tps window,
#: tps samples, uptime, cost, stats).
Row = tuple


def lb_weights(rows: Sequence[Row], config: RankingConfig) -> list[float]:
    """The load-balance weight of each candidate (formula in the core module docstring)."""
    cmin = min((row[7] for row in rows if row[7] > 0), default=0.0)
    tmin = min((row[0] for row in rows if row[0] is not None), default=None)
    if tmin is not None:
        tmin = max(tmin, 1e-3)
    pe = config.lb_price_exponent
    te = config.lb_ttft_exponent
    ue = config.lb_uptime_exponent
    unknown = config.lb_unknown_ttft_factor
    floor = config.lb_min_weight
    out = []
    for row in rows:
        c = row[7]
        t = row[0]
        u = row[6]
        pf = 1.0 if c <= 0 or cmin <= 0 else (cmin / c) ** pe
        lf = unknown if t is None or tmin is None else (tmin / max(t, 1e-3)) ** te
        uf = 1.0 if u is None else u**ue
        w = pf * lf * uf
        out.append(w if w > floor else floor)
    return out


def near_tie_order(known: list[tuple[float, int]], tol: float, rng: random.Random) -> list[int]:
    """Indices by ascending key; values within ``tol`` of their cluster's best are shuffled.

    Clusters are anchored at their first (best) value, not chained, so a long
    run of 4%-apart values does not turn into one giant tie.
    """
    known.sort()
    n = len(known)
    if n == 1:
        return [known[0][1]]
    out: list[int] = []
    i = 0
    while i < n:
        anchor = known[i][0]
        limit = anchor + tol * abs(anchor)
        j = i + 1
        while j < n and known[j][0] <= limit:
            j += 1
        if j - i == 1:
            out.append(known[i][1])
        else:
            group = [k[1] for k in known[i:j]]
            rng.shuffle(group)
            out.extend(group)
        i = j
    return out


def _sort_key(e: RankedEndpoint, sort: Sort) -> float | None:
    if sort is Sort.COST:
        return e.cost_usd
    if sort is Sort.TTFT:
        return e.ttft_ms
    return None if e.tps is None else -e.tps


def _order_rest(
    rest: list[int],
    entries: Sequence[RankedEndpoint],
    sort: Sort | None,
    weights: Sequence[float] | None,
    tol: float,
    rng: random.Random,
) -> list[int]:
    """The non-`order` part of one tier: by sort (near-ties shuffled) or weighted random."""
    if sort is None:
        assert weights is not None
        rnd = rng.random
        # Efraimidis-Spirakis: ascending Exp(1)/w is a weighted draw without replacement.
        lb = [(-_log(1.0 - rnd()) / weights[i], i) for i in rest]
        lb.sort()
        return [i for _, i in lb]
    known: list[tuple[float, int]] = []
    unknown: list[int] = []
    for i in rest:
        k = _sort_key(entries[i], sort)
        if k is None:
            unknown.append(i)
        else:
            known.append((k, i))
    out = near_tie_order(known, tol, rng) if known else []
    if unknown:  # only possible in the DEGRADED / PROBING tiers (no-data has its own tier)
        rng.shuffle(unknown)
        out.extend(unknown)
    return out


def order_positions(
    names: Sequence[str],
    entries: Sequence[RankedEndpoint],
    tiers: Sequence[int],
    order_pos: dict[str, int],
    sort: Sort | None,
    weights: Sequence[float] | None,
    tol: float,
    rng: random.Random,
) -> list[int]:
    """Candidate indices in execution order: tier by tier, `order` first, then the rest."""
    n = len(entries)
    if not order_pos and max(tiers, default=0) == TIER_OK:  # the common case
        return _order_rest(list(range(n)), entries, sort, weights, tol, rng)
    out: list[int] = []
    for tier in range(N_TIERS):
        ordered: list[tuple[int, int]] = []
        rest: list[int] = []
        for i in range(n):
            if tiers[i] != tier:
                continue
            pos = order_pos.get(names[i]) if order_pos else None
            if pos is None:
                rest.append(i)
            else:
                ordered.append((pos, i))
        if ordered:
            ordered.sort()
            out.extend(i for _, i in ordered)
        if rest:
            out.extend(_order_rest(rest, entries, sort, weights, tol, rng))
    return out
