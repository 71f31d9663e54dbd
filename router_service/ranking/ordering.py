"""Execution order: tiers, `order` providers, sort with near-tie shuffling, or load balance.

See ``router_service.ranking.core`` for the semantics and the weight formula;
the per-tier ordering and the draws are the sidecar's too, so they live in
``router_common.routing.order``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import NamedTuple

from router_common.domain import Sort
from router_common.routing.order import order_rest, order_tier, weighted_indices
from router_service.model import EndpointStats, HealthView
from router_service.ranking.filters import Prep
from router_service.ranking.request import RankingConfig

#: Tiers, best first. ``order`` providers can only be in OK, DEGRADED or PROBING.
N_TIERS = 5
TIER_OK, TIER_SOFT, TIER_NODATA, TIER_DEGRADED, TIER_PROBING = range(N_TIERS)


class Row(NamedTuple):
    """One candidate and the metrics its ranking uses (None: no data in any window)."""

    prep: Prep
    health: HealthView
    stats: EndpointStats
    ttft: float | None
    ttft_window: str
    ttft_samples: int
    tps: float | None
    tps_window: str
    tps_samples: int
    uptime: float | None
    cost: float


def lb_weights(rows: Sequence[Row], config: RankingConfig) -> list[float]:
    """The load-balance weight of each candidate (formula in the core module docstring)."""
    cmin = math.inf
    tmin = math.inf
    for row in rows:
        c = row.cost
        t = row.ttft
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
        c = row.cost
        t = row.ttft
        u = row.uptime
        pf = 1.0 if c <= 0 else (cmin / c) ** pe  # c > 0 implies a finite cmin
        lf = unknown if t is None else (tmin / (t if t > 1e-3 else 1e-3)) ** te
        uf = 1.0 if u is None else u**ue
        w = pf * lf * uf
        out.append(w if w > floor else floor)
    return out


def sort_keys(rows: Sequence[Row], sort: Sort) -> list[float | None]:
    """Ascending keys for ``sort``: cost, ttft, or negated tps (None = no data)."""
    if sort is Sort.COST:
        return [row.cost for row in rows]
    if sort is Sort.TTFT:
        return [row.ttft for row in rows]
    return [None if row.tps is None else -row.tps for row in rows]


def _band_weight(ratio: float, config: RankingConfig) -> float:
    """A candidate's spread weight, ``ratio`` times slower than the best (0: outside the band).

    1 within ``spread_equal_tolerance`` (two estimates that close differ by
    noise), ``ratio**-spread_exponent`` within ``spread_tolerance``.
    """
    if ratio <= 1.0 + config.spread_equal_tolerance:
        return 1.0
    if ratio <= 1.0 + config.spread_tolerance:
        return ratio**-config.spread_exponent
    return 0.0


def order_positions(
    names: Sequence[str],
    tiers: Sequence[int],
    order_pos: dict[str, int],
    keys: Sequence[float | None] | None,
    weights: Sequence[float] | None,
    tol: float,
    rng: random.Random,
) -> list[int]:
    """Candidate indices in execution order: tier by tier, each by ``order_tier``.

    ``keys`` (sort strategies) or ``weights`` (load balance) order the
    non-``order`` part of each tier.
    """
    n = len(tiers)
    if not order_pos and max(tiers, default=0) == TIER_OK:  # the common case
        return order_rest(range(n), keys, weights, tol, rng)
    out: list[int] = []
    for tier in range(N_TIERS):
        members = [i for i in range(n) if tiers[i] == tier]
        if members:
            out.extend(order_tier(members, names, order_pos, keys, weights, tol, rng))
    return out


def spread_band(
    positions: list[int],
    tiers: Sequence[int],
    keys: Sequence[float | None],
    sort: Sort,
    config: RankingConfig,
    rng: random.Random,
    lone: Sequence[bool] | None = None,
) -> tuple[list[int], dict[int, float]]:
    """Redraw the near-best head of a ``sort: ttft``/``tps`` order by weight.

    The head is the leading run of tier-OK candidates with a value; those
    within ``spread_tolerance`` of the run's best get a weight
    (``_band_weight``: ``(best/value)**spread_exponent``, tps
    ``(value/best)**...``, and 1 within ``spread_equal_tolerance``) and are
    drawn in a weighted order (Efraimidis-Spirakis), the rest of the run and
    everything after keep their place. A candidate whose value is ``lone``
    (one answer after a silence, ``RecentEstimate.lone``) joins a band led by
    a value that is not lone only as its best: one answer is enough to lead
    (a recovered provider is seen on its first answer) but not to share
    traffic with a better-known leader within the band's 25%, which one
    answer's own spread covers (a lognormal TTFT with sigma 0.2 lands within
    25% above a provider 25% faster than its own median about 4 times in 10).
    When the best is lone too, the band is drawn as usual. When nothing leads
    with a value (no data yet), the endpoints without data get weight 1 each
    (their order is already a uniform shuffle). Returns the new positions and the weights by
    candidate index (empty when fewer than two are near-best).
    """
    # Values in "bigger is better" form: 1/ttft or tps; the leading run of tier-OK ones.
    good: dict[int, float] = {}
    for i in positions:
        k = keys[i]
        if tiers[i] != TIER_OK or k is None:
            break
        good[i] = 1.0 / max(k, 1e-3) if sort is Sort.TTFT else -k
    if not good:
        # Nothing measured yet (a fresh router): the leading endpoints without
        # data are equal as far as anyone knows, so they are weighted equally
        # too; a client replaying one cached order would send all its traffic
        # for a whole cache window to whichever happened to be drawn first.
        unknown = [i for i in positions if tiers[i] == TIER_NODATA and keys[i] is None]
        if len(unknown) >= 2 and positions[0] == unknown[0]:
            equal = dict.fromkeys(unknown, 1.0)
            return positions, equal
    if len(good) < 2:
        return positions, {}
    top = max(good.values())
    if top <= 0:
        return positions, {}
    # A lone value is set aside only beside a best that is not lone itself: when the
    # best is one answer too (an incident just moved the traffic), every value is a
    # guess, and sharing gathers the answers that tell them apart the fastest.
    if lone is not None and any(lone[i] for i, v in good.items() if v == top):
        lone = None
    weights: dict[int, float] = {}
    set_aside = False
    for i, v in good.items():
        if v <= 0:  # a throughput of 0: nothing near the best
            continue
        if lone is not None and lone[i] and v < top:
            set_aside = True
            continue
        w = _band_weight(top / v, config)
        if w > 0:
            weights[i] = w
    if len(weights) < 2:
        if set_aside and weights:  # the near-tie shuffle may have put a lone one first
            (best,) = weights
            return [best, *(i for i in positions if i != best)], {}
        return positions, {}
    band = weighted_indices(list(weights), [weights.get(i, 0.0) for i in range(len(tiers))], rng)
    rest = [i for i in positions if i not in weights]
    return band + rest, weights
