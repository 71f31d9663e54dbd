"""Execution order: tiers, `order` providers, sort with near-tie shuffling, or load balance.

See ``router_service.ranking.core`` for the semantics and the weight formula.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from router_service.ranking.request import RankingConfig, Sort

#: Tiers, best first. ``order`` providers can only be in OK, DEGRADED or PROBING.
N_TIERS = 5
TIER_OK, TIER_SOFT, TIER_NODATA, TIER_DEGRADED, TIER_PROBING = range(N_TIERS)

_log = math.log

#: Per-candidate row: (prep, health view, stats, ttft, ttft window, ttft samples,
#: tps, tps window, tps samples, uptime, cost). A plain tuple: rank() builds 8 per call.
Row = tuple


def lb_weights(rows: Sequence[Row], config: RankingConfig) -> list[float]:
    """The load-balance weight of each candidate (formula in the core module docstring)."""
    cmin = math.inf
    tmin = math.inf
    for row in rows:
        c = row[10]
        t = row[3]
        if 0 < c < cmin:
            cmin = c
        if t is not None and t < tmin:
            tmin = t
    tmin = max(tmin, 1e-3)
    pe = config.lb_price_exponent
    te = config.lb_ttft_exponent
    ue = config.lb_uptime_exponent
    unknown = config.lb_unknown_ttft_factor
    floor = config.lb_min_weight
    out = []
    for row in rows:
        c = row[10]
        t = row[3]
        u = row[9]
        pf = 1.0 if c <= 0 else (cmin / c) ** pe  # c > 0 implies a finite cmin
        lf = unknown if t is None else (tmin / (t if t > 1e-3 else 1e-3)) ** te
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
    rnd = rng.random
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
        elif j - i == 2:
            a, b = known[i][1], known[i + 1][1]
            out.extend((a, b) if rnd() < 0.5 else (b, a))
        else:  # uniform shuffle via random sort keys (C-level random(), unlike rng.shuffle)
            group = [(rnd(), k[1]) for k in known[i:j]]
            group.sort()
            out.extend(g[1] for g in group)
        i = j
    return out


def _order_rest(
    rest: Sequence[int],
    keys: Sequence[float | None] | None,
    weights: Sequence[float] | None,
    tol: float,
    rng: random.Random,
) -> list[int]:
    """The non-`order` part of one tier: by sort key (near-ties shuffled) or weighted random."""
    if keys is None:
        assert weights is not None
        rnd = rng.random
        # Efraimidis-Spirakis: ascending Exp(1)/w is a weighted draw without replacement.
        lb = [(-_log(1.0 - rnd()) / weights[i], i) for i in rest]
        lb.sort()
        return [i for _, i in lb]
    known: list[tuple[float, int]] = []
    unknown: list[int] = []
    for i in rest:
        k = keys[i]
        if k is None:
            unknown.append(i)
        else:
            known.append((k, i))
    out = near_tie_order(known, tol, rng) if known else []
    if unknown:  # only possible in the DEGRADED / PROBING tiers (no-data has its own tier)
        rng.shuffle(unknown)
        out.extend(unknown)
    return out


def sort_keys(rows: Sequence[Row], sort: Sort) -> list[float | None]:
    """Ascending keys for ``sort``: cost, ttft, or negated tps (None = no data)."""
    if sort is Sort.COST:
        return [row[10] for row in rows]
    if sort is Sort.TTFT:
        return [row[3] for row in rows]
    return [None if row[6] is None else -row[6] for row in rows]


def order_positions(
    names: Sequence[str],
    tiers: Sequence[int],
    order_pos: dict[str, int],
    keys: Sequence[float | None] | None,
    weights: Sequence[float] | None,
    tol: float,
    rng: random.Random,
) -> list[int]:
    """Candidate indices in execution order: tier by tier, `order` first, then the rest.

    ``keys`` (sort strategies) or ``weights`` (load balance) order the rest.
    """
    n = len(tiers)
    if not order_pos and max(tiers, default=0) == TIER_OK:  # the common case
        return _order_rest(range(n), keys, weights, tol, rng)
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
            out.extend(_order_rest(rest, keys, weights, tol, rng))
    return out
