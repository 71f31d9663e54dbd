"""``rank()``: a pure function from (request, endpoints, stats, health, now, rng) to an order.

Nothing here reads a clock, touches I/O or keeps state between calls except a
bounded cache of per-model precomputed tuples (keyed by object identity, so a
reloaded catalog simply misses). Randomness comes only from the injected
``rng``, so a seeded ``random.Random`` makes every ranking reproducible.

Pipeline:

1. Candidates are the model's endpoints, in catalog order.
2. Hard filters, first match wins, each recorded as an ``Exclusion``: ``only``,
   ``ignore``, ``zero_data_retention``, max input price, max output price, then
   health (EJECTED, or PROBING without a free probe permit). Panic: if the
   health filter alone removed every remaining candidate, the health-excluded
   ones are returned anyway, least-recently-failed first (``panic`` flag,
   strategy "panic", each carrying its health reason as ``deprioritized``).
   The preference filters are never undone by panic: a ZDR request never
   sees a non-ZDR host, and preferences filtering everything gives an empty
   ``ranked`` (the server's error), not panic.
3. Every candidate gets a tier; the result is tier by tier, and inside a tier
   ``order`` providers first (in ``order`` order), then the rest:
   tier 0 fine; 1 missed a soft preference; 2 no data for the sort metric;
   3 DEGRADED; 4 PROBING. ``order`` providers are only moved for health
   (tiers 3-4): an explicit order outranks soft preferences. Exceptions: the
   first ``order`` provider that is PROBING with a free permit keeps its ordered
   place and takes the probe when that place is first (else it waits at the
   tail, so no permit is held by a request that would not reach it); without
   ``order``, one PROBING endpoint with a free permit goes first as the
   half-open probe (the others follow as its fallbacks), and only it is
   reported in ``probing`` so the server grants exactly one permit.
4. The rest of a tier is ordered by ``sort`` (cost / ttft ascending, tps
   descending) with near-ties (within ``near_tie_tolerance`` of the best value
   of their cluster) shuffled; without ``sort`` it is a weighted random order
   (load balance). Under ``sort: ttft``/``tps`` (without ``order``) the
   near-best head (within ``spread_tolerance`` of the best; with no data yet,
   the unmeasured endpoints, equally) is then redrawn
   with weights ``(best/value)**spread_exponent`` (1 within
   ``spread_equal_tolerance``), sent with the ranking, so
   a fleet asking for "the fastest" of near-equal endpoints spreads over them
   (``ordering.spread_band``). Under every strategy but ``order`` (and not in
   panic), an ``exploration_share`` of requests (``exploration_share_unknown``
   while some candidate was never measured) put one HEALTHY or DEGRADED
   endpoint with thin (< ``min_samples`` TTFT samples in 5m), stale (last
   TTFT older than ``stale_after_s``) or no data first, an unmeasured one if
   any, else uniformly, or by promise when ``exploration_promise_exponent``
   is set (``exploration`` flag + reason): weight
   ``(best/value)**exploration_promise_exponent`` of its long-run (1-hour)
   value of the sort metric among the explorable ones, at least
   ``exploration_min_weight``. Every such endpoint is marked ``explorable``
   with that ``exploration_weight`` and the share is returned, so a client
   that reuses the ranking explores per request too, by the same weights.
   TTFT values come from the recent decayed estimate while it is fresh
   (``recent_max_age_s``; window "recent"), scaled to the percentile by the
   windows' ``p_q / p50``; a DEGRADED endpoint whose recent evidence postdates
   its degradation is ranked on it like a healthy one (``_recent_overrides``).
   Each entry also carries a suggested first-token timeout and hedge delay
   (``_timeouts``).
5. ``allow_fallbacks=False`` keeps only the first endpoint, or with ``order``
   the leading endpoints of providers ``order`` names (``kept_without_fallbacks``);
   the others are excluded with "fallbacks_disabled" (and no probe permit is
   asked for them).

Percentiles are literal quantiles of the metric: ``percentile=0.9`` ranks by
the p90 TTFT (slow tail) and by the p90 throughput (fast tail), the same
numbers the metrics API reports.

Metrics come from the 5-minute window when it has ``min_samples`` samples,
else from the 1-hour window when it has ``min_samples_1h``, else "none".

Cost: with token estimates, ``input_tokens * input_price + max_output_tokens *
output_price`` (USD per request); without, the blended price
``(input + k * output) / (1 + k)`` USD per million tokens, k =
``blend_output_weight`` (default 3).

Load-balance weight of endpoint i (all factors in (0, 1], relative to the best
candidate of this request, so the formula is scale-free)::

    w_i = max(lb_min_weight, P_i * L_i * U_i)
    P_i = (c_min / c_i) ** lb_price_exponent   # c = cost above; c_min = cheapest
                                               # positive cost; P = 1 if c_i == 0
    L_i = (t_min / t_i) ** lb_ttft_exponent    # t = TTFT at the percentile;
                                               # unknown t -> lb_unknown_ttft_factor
    U_i = uptime_1h ** lb_uptime_exponent      # unknown uptime -> 1

Defaults (2, 2, 2, 0.5, 0.01): inverse-square of price like OpenRouter's
default balancing, inverse-square TTFT, squared uptime. The order is drawn without
replacement in proportion to w (Efraimidis-Spirakis: sort by -ln(1-u)/w), so
P(first = i) = w_i / sum(w) and the floor keeps every endpoint in rotation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from router_common.catalog_model import Model
from router_common.domain import EndpointKey, Sort
from router_common.limits import MAX_FIRST_TOKEN_TIMEOUT_MS
from router_common.routing import reasons as rc
from router_common.routing.cost import cost_factors, endpoint_cost
from router_common.routing.filters import hard_filter
from router_common.routing.order import kept_without_fallbacks, weighted_choice
from router_common.routing.reasons import Reason
from router_service.model import (
    EMPTY_STATS,
    HEALTHY,
    EndpointStats,
    HealthState,
    HealthView,
    MetricSummary,
)
from router_service.ranking import result as r
from router_service.ranking.filters import (
    degraded_reason,
    no_data_reason,
    pick,
    prepare,
    probing_reason,
    tps_reason,
    ttft_reason,
    unhealthy_reason,
)
from router_service.ranking.ordering import (
    TIER_DEGRADED,
    TIER_NODATA,
    TIER_OK,
    TIER_PROBING,
    TIER_SOFT,
    Row,
    lb_weights,
    order_positions,
    sort_keys,
    spread_band,
)
from router_service.ranking.request import (
    DEFAULT_CONFIG,
    RankingConfig,
    RankingInputError,
    RoutingRequest,
)
from router_service.ranking.result import Exclusion, RankedEndpoint, RankingResult

#: ``tuple.__new__(Row, values)`` builds a NamedTuple in C, skipping the
#: generated Python ``__new__``: rank() builds two tuples per candidate per call.
_new = tuple.__new__
_EJECTED = HealthState.EJECTED
_PROBING = HealthState.PROBING
_DEGRADED = HealthState.DEGRADED
_HEALTHY = HealthState.HEALTHY


def _strategy(request: RoutingRequest) -> str:
    if request.order:
        return r.STRATEGY_ORDER_SORT if request.sort is not None else r.STRATEGY_ORDER
    return r.STRATEGY_SORT if request.sort is not None else r.STRATEGY_LOAD_BALANCE


def _panic_key(row: Row) -> tuple[float, float, int]:
    """Least-recently-failed first (never failed before any failure), then catalog order."""
    hv = row.health
    last = hv.last_failure_at
    until = hv.ejected_until
    return (
        -math.inf if last is None else last,
        -math.inf if until is None else until,
        row.prep.position,
    )


def rank(
    request: RoutingRequest,
    model: Model,
    stats: Mapping[EndpointKey, EndpointStats],
    health: Mapping[EndpointKey, HealthView],
    now: float,
    rng: random.Random,
    config: RankingConfig = DEFAULT_CONFIG,
) -> RankingResult:
    """Order ``model``'s endpoints for ``request`` and explain every placement.

    Raises RankingInputError for an invalid request (or one for another
    model); never raises for "nothing left": ``ranked`` is then empty and
    ``excluded`` says why.
    """
    request.validate()
    if request.model != model.id:
        raise RankingInputError(
            "model", f"request is for {request.model!r} but the catalog model is {model.id!r}"
        )
    sort = request.sort
    if sort is not None and type(sort) is not Sort:
        sort = Sort(sort)  # a plain "ttft" string passed validation; normalise for `is`
    q = request.percentile
    order_pos = {name: i for i, name in enumerate(request.order)} if request.order else {}
    strategy = _strategy(request)

    # 1-2. Candidates, hard filters, and one metrics Row per survivor, computed
    # for unhealthy endpoints too, for panic mode.
    filters = request.hard_filters()
    min5 = config.min_samples
    min1h = config.min_samples_1h
    recent_age = config.recent_max_age_s
    factors = cost_factors(
        request.input_tokens, request.max_output_tokens, config.blend_output_weight
    )
    excluded: list[Exclusion] = []
    live: list[Row] = []
    unhealthy: list[Row] = []
    hget = health.get
    sget = stats.get
    for p in prepare(model):
        if filters is not None:
            failed = hard_filter(filters, p.provider, p.zdr, p.input_price, p.output_price)
            if failed is not None:
                excluded.append(Exclusion(p.endpoint, failed))
                continue
        key = p.key
        hv = hget(key, HEALTHY)
        s = sget(key, EMPTY_STATS)
        t, tw, tc = pick(s.ttft_5m, s.ttft_1h, q, min5, min1h)
        rec = s.recent
        rt = rec.ttft_ms
        if rt is not None and rec.ttft_at is not None and now - rec.ttft_at <= recent_age:
            if t is None:
                t, tc = rt, rec.samples
            else:  # the recent level, with the windows' shape at the percentile
                p50 = (s.ttft_5m if tw == r.WINDOW_5M else s.ttft_1h).get(0.5)
                t = rt * (t / p50) if p50 else rt
            tw = r.WINDOW_RECENT
        v, vw, vc = pick(s.tps_5m, s.tps_1h, q, min5, min1h)
        u = s.uptime_1h
        a = u.attempts
        row: Row = _new(
            Row,
            (
                p,
                hv,
                s,
                t,
                tw,
                tc,
                v,
                vw,
                vc,
                u.successes / a if a else None,
                endpoint_cost(factors, p.input_price, p.output_price),
            ),
        )
        st = hv.state
        if st is _EJECTED or (st is _PROBING and not hv.probe_available):
            unhealthy.append(row)
        else:
            live.append(row)

    panic = not live and bool(unhealthy)
    if panic:
        unhealthy.sort(key=_panic_key)
        live = unhealthy
        strategy = r.STRATEGY_PANIC
    else:
        for row in unhealthy:
            excluded.append(
                Exclusion(row.prep.endpoint, unhealthy_reason(row.health, now, panic=False))
            )

    # Load-balance weights, when no sort decides the non-`order` part.
    weights = lb_weights(live, config) if sort is None and not panic else None

    # Tiers, deprioritization reasons, and the ranked entries (in candidate order).
    pref_ttft = request.preferred_max_ttft_ms
    pref_tps = request.preferred_min_tps
    soft = pref_ttft is not None or pref_tps is not None or sort is Sort.TTFT or sort is Sort.TPS
    sort_tps = sort is Sort.TPS
    explore_ok = not panic and not order_pos
    entries: list[RankedEndpoint] = []
    tiers: list[int] = []
    # Half-open probe within an explicit order: the first `order` provider that is
    # PROBING with a free permit keeps its ordered place and takes the probe, so a
    # workload that always sends `order` gets a recovered provider back.
    ordered_probe = -1
    if order_pos and not panic and request.allow_fallbacks:
        best = len(order_pos)
        for i, row in enumerate(live):
            pos = order_pos.get(row.prep.provider)
            if pos is not None and pos < best and row.health.state is _PROBING:
                ordered_probe, best = i, pos
        # Its ordered place is first only if no routable `order` provider comes before
        # it (a degraded one still does: it keeps its place, just in a lower tier).
        if ordered_probe >= 0 and any(
            order_pos.get(row.prep.provider, best) < best for row in live
        ):
            ordered_probe = -1
    for i, (p, hv, _s, t, tw, tc, v, vw, vc, up, cost) in enumerate(live):
        st = hv.state
        tier = TIER_OK
        reason: Reason | None = None
        if panic:
            reason = unhealthy_reason(hv, now, panic=True)
        elif st is _PROBING:
            if i != ordered_probe:
                tier, reason = TIER_PROBING, probing_reason(hv, now)
        elif st is _DEGRADED and not _recent_overrides(hv, _s, now, config):
            tier, reason = TIER_DEGRADED, degraded_reason(hv, now, t)
        elif soft and p.provider not in order_pos:  # an explicit order outranks soft preferences
            if sort is Sort.TTFT and t is None:
                tier, reason = TIER_NODATA, no_data_reason("ttft", tc, min5, min1h)
            elif sort_tps and v is None:
                tier, reason = TIER_NODATA, no_data_reason("tps", vc, min5, min1h)
            elif pref_ttft is not None and t is not None and t > pref_ttft:
                tier, reason = TIER_SOFT, ttft_reason(t, tw, tc, pref_ttft, q)
            elif pref_tps is not None and v is not None and v < pref_tps:
                tier, reason = TIER_SOFT, tps_reason(v, vw, vc, pref_tps, q)
        tiers.append(tier)
        entries.append(
            _new(
                RankedEndpoint,
                (
                    p.endpoint,
                    t,
                    v,
                    vw if sort_tps else tw,
                    tc,
                    vc,
                    up,
                    cost,
                    st,
                    reason,
                    False,
                    tw,
                    vw,
                    None if weights is None else weights[i],
                    explore_ok and _explorable(hv, _s, now, min5, config.stale_after_s),
                    *_timeouts(_s, _fresh_recent_ttft(_s, now, recent_age), config),
                    None,  # exploration_weight: set below on the explorable ones
                ),
            )
        )

    # 3-4. Execution order.
    if panic:
        positions = list(range(len(live)))
    else:
        names = [row.prep.provider for row in live] if order_pos else []
        keys = None if sort is None else sort_keys(live, sort)
        positions = order_positions(
            names, tiers, order_pos, keys, weights, config.near_tie_tolerance, rng
        )
        if keys is not None and not order_pos and (sort is Sort.TTFT or sort is Sort.TPS):
            lone = (
                [row.ttft_window == r.WINDOW_RECENT and row.stats.recent.lone for row in live]
                if sort is Sort.TTFT
                else None
            )
            positions, spread = spread_band(positions, tiers, keys, sort, config, rng, lone)
            for i, w in spread.items():
                entries[i] = entries[i]._replace(weight=w)

    # Exploration (every strategy but `order`): sometimes put an endpoint with
    # thin, stale or no data first. The coin is tossed first so the pool scan
    # costs nothing on most requests; while some candidate was never measured
    # the share is the larger exploration_share_unknown.
    # A half-open probe (below) takes the first place before exploration does: it
    # tests a recovery, and an endpoint left at the tail without its permit would
    # be a probe the fleet never granted (one permit means one request in flight).
    exploration_reason: Reason | None = None
    share_now = 0.0
    probe_waiting = request.allow_fallbacks and any(
        live[i].health.state is _PROBING for i in positions
    )
    # The probe only takes this request's first place: the share and the explorable
    # marks still go out, so a client reusing this ranking goes on exploring (with the
    # share withheld, every ranking during a probe, seconds of them in a recovery, left
    # a recovered endpoint unexplored: bench/bench_routing.py --per-second).
    if explore_ok:
        pool = [i for i in positions[1:] if entries[i].explorable]
        unknown = [i for i in pool if _never_measured(live[i].stats)]
        share_now = config.exploration_share_unknown if unknown else config.exploration_share
        if pool and config.exploration_promise_exponent > 0:
            _weigh_explorable(pool, live, entries, sort_tps, q, config)
        if not probe_waiting and pool and share_now > 0 and rng.random() < share_now:
            among = unknown or pool
            chosen = _pick_explored(among, entries, rng)
            positions.remove(chosen)
            positions.insert(0, chosen)
            exploration_reason = _exploration_reason(
                live[chosen].prep.provider, live[chosen].stats, now, min5, config.stale_after_s
            )
            # Put first on purpose: the reason says why (thin or stale data), in place
            # of the one that moved it down (e.g. no_data_for_sort), which no longer holds.
            entries[chosen] = entries[chosen]._replace(
                exploration=True, deprioritized=exploration_reason
            )
    # Half-open probe: without an explicit order, one PROBING endpoint with a free
    # permit goes first, so recovery is tested on real traffic (the rest of the
    # order is its fallback). Left at the tail it would never be reached while
    # healthy endpoints answer, and would stay PROBING forever.
    probe = -1
    if ordered_probe >= 0:
        if positions[0] == ordered_probe:
            probe = ordered_probe
        else:  # not first: it would hold the permit unused, so it waits with the probing tier
            positions.remove(ordered_probe)
            positions.append(ordered_probe)
            hv = live[ordered_probe].health
            entries[ordered_probe] = entries[ordered_probe]._replace(
                deprioritized=probing_reason(hv, now)
            )
    if not panic and not order_pos and request.allow_fallbacks and exploration_reason is None:
        probe = next((i for i in positions if live[i].health.state is _PROBING), -1)
        if probe >= 0:
            positions.remove(probe)
            positions.insert(0, probe)
            entries[probe] = entries[probe]._replace(deprioritized=None)
    ranked = [entries[i] for i in positions]

    # 5. allow_fallbacks=False: the first endpoint only, or the leading `order` ones.
    kept = (
        len(ranked)
        if request.allow_fallbacks
        else kept_without_fallbacks([e.endpoint.provider.name for e in ranked], request.order)
    )
    if kept < len(ranked):
        tried = ", ".join(e.endpoint.provider.name for e in ranked[:kept])
        for pos, dropped in enumerate(ranked[kept:], start=kept + 1):
            why = "" if dropped.deprioritized is None else f" (also {dropped.deprioritized.code})"
            excluded.append(
                Exclusion(
                    dropped.endpoint,
                    Reason(
                        rc.FALLBACKS_DISABLED,
                        f"allow_fallbacks=false: only {tried} tried; this was #{pos}{why}",
                        {"position": float(pos)},
                    ),
                )
            )
        del ranked[kept:]

    return RankingResult(
        ranked=tuple(ranked),
        excluded=tuple(excluded),
        strategy=strategy,
        sort=sort,
        percentile=q,
        panic=panic,
        exploration=exploration_reason is not None,
        probing=(live[probe].prep.key,) if probe >= 0 else (),
        exploration_reason=exploration_reason,
        cost_basis=factors.basis,
        exploration_share=share_now,
    )


def _weigh_explorable(
    pool: list[int],
    live: list[Row],
    entries: list[RankedEndpoint],
    sort_tps: bool,
    q: float,
    config: RankingConfig,
) -> None:
    """Give each explorable entry its exploration weight (``RankingConfig`` docs: promise).

    The long-run value is the 1-hour window's at the request's percentile
    (throughput under ``sort: tps``, TTFT otherwise); an endpoint without one
    is as promising as the best.
    """
    values: dict[int, float] = {}
    for i in pool:
        w = live[i].stats.tps_1h if sort_tps else live[i].stats.ttft_1h
        v = w.get(q) if w.count else None
        if v is not None and v > 0:
            values[i] = v
    best = (max if sort_tps else min)(values.values(), default=None)
    exp = config.exploration_promise_exponent
    floor = config.exploration_min_weight
    for i in pool:
        v = values.get(i)
        if v is None or best is None:
            weight = 1.0
        else:
            weight = max(floor, ((v / best) if sort_tps else (best / v)) ** exp)
        entries[i] = entries[i]._replace(exploration_weight=weight)


def _pick_explored(among: list[int], entries: list[RankedEndpoint], rng: random.Random) -> int:
    """One of ``among`` drawn in proportion to its exploration weight (uniform when equal)."""
    return weighted_choice(among, [entries[i].exploration_weight or 1.0 for i in among], rng)


def _last_ttft_at(s: EndpointStats) -> float | None:
    """When the endpoint last answered with a TTFT (recent estimate, else the windows)."""
    at = s.recent.ttft_at
    return s.last_sample_at if at is None else at


def _never_measured(s: EndpointStats) -> bool:
    """No attempt in the last hour and nothing recent: nothing is known at all."""
    return s.uptime_1h.attempts == 0 and s.ttft_1h.count == 0 and s.recent.attempt_at is None


def _explorable(
    hv: HealthView, s: EndpointStats, now: float, min5: int, stale_after: float
) -> bool:
    """Healthy or degraded (never probing/ejected) with thin, stale or no TTFT data.

    Degraded endpoints are included once stale: that is how the recovery of
    an endpoint nobody sends traffic to gets seen.
    """
    st = hv.state
    if st is not _HEALTHY and st is not _DEGRADED:
        return False
    last = _last_ttft_at(s)
    if last is None or now - last > stale_after:
        return True
    return st is _HEALTHY and s.ttft_5m.count < min5 and s.recent.samples < min5


def _recent_overrides(hv: HealthView, s: EndpointStats, now: float, config: RankingConfig) -> bool:
    """A DEGRADED endpoint is ranked on its recent numbers when they postdate the degradation.

    Health judges the last 20 answers over minutes; the recent estimate the
    last seconds. Once TTFT evidence newer than the degradation exists (and
    the recent failure ratio is low), it says where the endpoint belongs: a
    still-slow one sorts low by that TTFT, a recovered one gets its traffic
    back without waiting for health's evidence to age out.
    """
    rec = s.recent
    at = rec.ttft_at
    return (
        at is not None
        and at > hv.since
        and now - at <= config.recent_max_age_s
        and rec.failure_ratio <= config.recovered_max_failure_ratio
    )


def _fresh_recent_ttft(s: EndpointStats, now: float, max_age: float) -> float | None:
    """The recent decayed TTFT level while fresh, else None.

    Unscaled on purpose: the suggested timeout and hedge delay describe the
    endpoint (its p99 and p95), not the request, so they must not move with
    the request's ``percentile`` (the ranked ``ttft_ms`` is scaled to it).
    """
    rec = s.recent
    at = rec.ttft_at
    if rec.ttft_ms is None or at is None or now - at > max_age:
        return None
    return rec.ttft_ms


def _quantile(s: EndpointStats, q: float, min_samples: int) -> float | None:
    """The q-quantile of TTFT from the 5m window, else 1h, when it has ``min_samples``."""
    w: MetricSummary
    for w in (s.ttft_5m, s.ttft_1h):
        if w.count >= min_samples:
            return w.get(q)
    return None


def _timeouts(
    s: EndpointStats, recent_ttft: float | None, config: RankingConfig
) -> tuple[float | None, float | None]:
    """(first-token timeout, hedge delay) in ms for one endpoint; None without enough data.

    Timeout: ``multiple * max(p99, recent)``, at least the floor. Hedge delay:
    ``max(p95, recent)``. Both capped at MAX_FIRST_TOKEN_TIMEOUT_MS.
    """
    n = config.first_token_timeout_min_samples
    p99 = _quantile(s, 0.99, n)
    if p99 is None:
        return None, None
    p95 = _quantile(s, 0.95, n) or p99
    if recent_ttft is not None:
        p99 = max(p99, recent_ttft)
        p95 = max(p95, recent_ttft)
    timeout = max(config.first_token_timeout_floor_ms, config.first_token_timeout_multiple * p99)
    return min(timeout, MAX_FIRST_TOKEN_TIMEOUT_MS), min(p95, MAX_FIRST_TOKEN_TIMEOUT_MS)


def _exploration_reason(
    name: str, s: EndpointStats, now: float, min5: int, stale_after: float
) -> Reason:
    last = _last_ttft_at(s)
    age = None if last is None else now - last
    nums = {"samples_5m": float(s.ttft_5m.count), "min_samples": float(min5)}
    if age is not None:
        nums["last_sample_age_s"] = round(age, 3)
    return Reason(
        rc.EXPLORATION,
        f"exploring {name}: {s.ttft_5m.count} TTFT samples in 5m (min {min5}), last sample "
        + ("never" if age is None else f"{age:.0f}s ago")
        + f" (stale after {stale_after:g}s)",
        nums,
    )
