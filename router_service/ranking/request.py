"""What a caller may ask of the ranking, and the knobs the operator tunes it with.

Validation lives here, next to the shapes, so that every entry point (gRPC,
sidecar fallback, tests) rejects the same bad input with the same message, and
so that no request can make ranking do unbounded work: list lengths, name
lengths and token counts are capped before anything iterates over them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from router_common.domain import Sort
from router_common.json_text import as_json
from router_common.limits import (
    MAX_FIRST_TOKEN_TIMEOUT_MS,
    MAX_MODEL_ID_LEN,
    MAX_NAME_LEN,
    MAX_PROVIDER_LIST,
    MAX_TOKENS,
)
from router_common.routing.cost import DEFAULT_BLEND_OUTPUT_WEIGHT
from router_common.routing.filters import HardFilters
from router_common.routing.order import DEFAULT_NEAR_TIE_TOLERANCE
from router_service.model import RANKING_QUANTILES

_SORTS = frozenset(Sort)
#: Builds a NamedTuple in C, skipping its generated Python ``__new__``.
_new = tuple.__new__


class RankingInputError(ValueError):
    """A routing request that cannot be honoured as written.

    ``field`` names the offending request field so the server can map it to an
    INVALID_ARGUMENT with a precise message instead of a generic failure.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _is_number(x: object) -> bool:
    """int or float but not bool (``True`` as a price is a bug, not a dollar)."""
    return isinstance(x, int | float) and not isinstance(x, bool)


def _check_price(field: str, value: float | None) -> None:
    if value is None:
        return
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise RankingInputError(field, f"must be a finite number >= 0, got {value!r}")


def _check_tokens(field: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TOKENS:
        raise RankingInputError(field, f"must be an integer in [0, {MAX_TOKENS}], got {value!r}")


def _check_names(field: str, names: object) -> None:
    """Bounded list of short, non-empty strings; checked before anything iterates over it."""
    try:
        n = len(names)  # type: ignore[arg-type]
    except TypeError:
        raise RankingInputError(field, "must be a collection of provider names") from None
    if isinstance(names, str):
        raise RankingInputError(field, "must be a collection of provider names, not a string")
    if n > MAX_PROVIDER_LIST:
        raise RankingInputError(field, f"at most {MAX_PROVIDER_LIST} providers, got {n}")
    for name in names:  # type: ignore[attr-defined]
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_LEN:
            raise RankingInputError(
                field, f"provider names must be 1..{MAX_NAME_LEN} characters, got {name!r:.40}"
            )


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    """The routing preferences of one request (the union of Vercel's and OpenRouter's).

    Hard filters: ``only``, ``ignore``, ``zero_data_retention``,
    ``max_input_price`` / ``max_output_price`` (USD per million tokens).
    Order: ``order`` providers first, the rest by ``sort`` at ``percentile``.
    Soft preferences (a miss moves the endpoint down, never drops it):
    ``preferred_max_ttft_ms``, ``preferred_min_tps``, judged at ``percentile``.
    ``percentile`` is a quantile in RANKING_QUANTILES (0.5 = p50).
    ``input_tokens`` / ``max_output_tokens`` turn prices into a per-request
    cost estimate; when both are 0 a blended price is used instead.
    """

    model: str
    sort: Sort | None = None
    percentile: float = 0.5
    order: tuple[str, ...] = ()
    only: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    zero_data_retention: bool = False
    max_input_price: float | None = None
    max_output_price: float | None = None
    preferred_max_ttft_ms: float | None = None
    preferred_min_tps: float | None = None
    allow_fallbacks: bool = True
    input_tokens: int = 0
    max_output_tokens: int = 0

    def validate(self) -> None:
        """Raise RankingInputError naming the first bad field; cheap for default requests."""
        model = self.model
        if not isinstance(model, str) or not model or len(model) > MAX_MODEL_ID_LEN:
            raise RankingInputError("model", f"must be 1..{MAX_MODEL_ID_LEN} characters")
        if self.sort is not None and self.sort not in _SORTS:
            raise RankingInputError(
                "sort", f"must be one of {', '.join(s.value for s in Sort)}, got {self.sort!r:.40}"
            )
        if self.percentile not in RANKING_QUANTILES or isinstance(self.percentile, bool):
            allowed = ", ".join(str(q) for q in RANKING_QUANTILES)
            raise RankingInputError(
                "percentile", f"must be one of {allowed}, got {self.percentile!r:.40}"
            )
        order = self.order
        if order:
            if not isinstance(order, tuple | list):
                raise RankingInputError("order", "must be a sequence of provider names")
            _check_names("order", order)
            if len(set(order)) != len(order):
                raise RankingInputError("order", "lists a provider more than once")
        only = self.only
        if only is not None:
            if not isinstance(only, frozenset | set):
                raise RankingInputError("only", "must be a set of provider names")
            _check_names("only", only)
            if not only:
                raise RankingInputError(
                    "only", "must name at least one provider (leave it unset for no restriction)"
                )
        ignore = self.ignore
        if not isinstance(ignore, frozenset | set):
            raise RankingInputError("ignore", "must be a set of provider names")
        if ignore:
            _check_names("ignore", ignore)
            if only is not None:
                both = only & ignore
                if both:
                    raise RankingInputError(
                        "ignore", f"providers in both only and ignore: {sorted(both)}"
                    )
        if order:
            if ignore:
                bad = [p for p in order if p in ignore]
                if bad:
                    raise RankingInputError("order", f"providers also in ignore: {bad}")
            if only is not None:
                bad = [p for p in order if p not in only]
                if bad:
                    raise RankingInputError("order", f"providers outside only: {bad}")
        if not isinstance(self.zero_data_retention, bool):
            raise RankingInputError("zero_data_retention", "must be a boolean")
        if not isinstance(self.allow_fallbacks, bool):
            raise RankingInputError("allow_fallbacks", "must be a boolean")
        _check_price("max_input_price", self.max_input_price)
        _check_price("max_output_price", self.max_output_price)
        _check_price("preferred_max_ttft_ms", self.preferred_max_ttft_ms)
        _check_price("preferred_min_tps", self.preferred_min_tps)
        if self.input_tokens:
            _check_tokens("input_tokens", self.input_tokens)
        if self.max_output_tokens:
            _check_tokens("max_output_tokens", self.max_output_tokens)

    def hard_filters(self) -> HardFilters | None:
        """The request's hard filters, or None when it sets none (the common case)."""
        only, ignore, zdr = self.only, self.ignore, self.zero_data_retention
        max_in, max_out = self.max_input_price, self.max_output_price
        if only is None and not ignore and not zdr and max_in is None and max_out is None:
            return None
        return _new(HardFilters, (only, frozenset(ignore), zdr, max_in, max_out))


@dataclass(frozen=True, slots=True)
class RankingConfig:
    """Operator knobs for ranking, with the defaults the design assumes.

    - ``near_tie_tolerance``: sort values within this relative distance of the
      best value in their group are a tie and shuffled per request (0.05 = 5%),
      so a thousand sidecars asking at once do not stampede one endpoint.
    - ``exploration_share`` (0.05): under every strategy but ``order``, the
      share of requests that put one endpoint with thin, stale or no data
      first, so data is never missing for long (bounded: 1 request in 20).
    - ``exploration_share_unknown`` (0.25): the share while some candidate
      has never been measured at all (a fresh router, a new model, a new
      provider): a new model finds its fastest provider within seconds, as
      LiteLLM does by trying unmeasured deployments first, yet 3 requests in
      4 still go to the best known one. It ends by itself: each exploration
      measures one endpoint.
    - ``exploration_promise_exponent`` (0: off) and ``exploration_min_weight``
      (0.1): which explorable endpoint an exploration picks. Off, uniformly.
      With an exponent e > 0, by promise: weight ``(best/value)**e`` of each
      one's long-run value (the 1-hour window, at the request's percentile:
      TTFT, or throughput ``(value/best)**e`` under ``sort: tps``) against
      the best among them; never measured counts as the best; at least the
      floor, so every endpoint is still re-measured. Why one would: the
      stale endpoints are those nobody sends traffic to, and re-checking one
      that is usually the fastest (it may have recovered from a slowdown) is
      worth more than re-checking one that is always slow. Why it is off by
      default: the same weight sends a slowed, usually-fastest provider most
      of the explorations for as long as it stays slow, and a fleet's
      operator sees that as traffic to a provider the router was meant to
      route around (router_demo's 3x slowdown then showed the slow provider
      first for more than 5% of latency-sorted requests in some seconds near
      the incident's end and was judged "not routed around"); in
      bench/bench_routing.py e = 2 gave 1.15x the oracle's whole-run mean
      with and without hedging in a full round, within the noise of uniform
      picks. Set 2 to favour the quickest return of a recovered provider.
    - ``min_samples``: the 5-minute window is used when it has at least this
      many samples; otherwise the 1-hour window if it has ``min_samples_1h``.
    - ``stale_after_s`` (1.5): an endpoint whose last successful TTFT is
      older is "stale" and explorable; at tens of requests per second an
      endpoint without a sample for 1.5 s gets no traffic but explorations,
      so its data no longer says what it does now, and a demoted (or
      degraded) endpoint is thus re-measured within seconds (exploration's
      share bounds the cost, whatever this threshold), which is how a
      recovered one is seen and promoted. Why 1.5 and not 3: with 3 s, the
      recovered fastest provider in bench/bench_routing.py was first
      re-checked 3-4 s after its last (slow) probe, then 4-9 s passed before
      it led again; the share spent is the same, only more of it goes to
      the endpoints that have been out of sight longest.
    - ``recent_max_age_s`` (30): the recent TTFT estimate
      (``router_service.sketches.recent``) replaces the windows' value while
      it was updated this recently; the windows' percentile is scaled by
      ``recent / p50`` so ``percentile`` keeps its meaning. Older, the windows
      speak alone.
    - ``recovered_max_failure_ratio`` (0.1): a DEGRADED endpoint with recent
      TTFT evidence gathered after it was degraded, and a recent failure ratio
      at most this, is ranked on that evidence like a healthy one: health's
      detector looks at the last 20 answers over minutes, the recent estimate
      at the last seconds, so a recovered endpoint gets its traffic back in
      seconds.
    - ``spread_tolerance`` (0.25) and ``spread_exponent`` (3): under
      ``sort: ttft``/``tps`` the endpoints whose value is within 25% of the
      best are drawn in a weighted order, weight ``(best/value)**3`` for TTFT
      (``(value/best)**3`` for tps): equal ones share traffic evenly (four
      sidecars asking for "the fastest" of four equal providers spread
      instead of herding, even though each one's recent estimate is noisy),
      one 5% slower gets 0.86 of the best one's share, one 25% slower 0.51,
      and beyond 25% the order is strict. An estimate that is one answer
      given after a silence (``RecentEstimate.lone``) joins a band led by one
      that is not only as the best (``ordering.spread_band``). The weights
      are sent so a client reusing the ranking redraws per request.
    - ``spread_equal_tolerance`` (0.1): within 10% of the best the weight is
      1. Two recent estimates of equal endpoints differ by a few percent of
      noise; weighted by ``(best/value)**3`` that noise became a lean of the
      herd (bench/bench_routing.py) toward whichever endpoint had the
      luckiest samples. No two of that benchmark's distinct providers are
      within 10% of each other, so this costs a fleet nothing where speeds
      really differ. Tried and dropped: keeping a candidate beyond the band
      in it with a trickle of traffic while its estimate rests on few
      samples (weight scaled by its standard error). With the recent
      estimate's warm-up (``RecentTracker._warm``) it measured no better in
      the herd (mean 31.2% either way over eight seeds), and it sent a
      slowed provider's post-exploration samples a trickle the demo counted
      as not routed around.
    - ``first_token_timeout_multiple`` (2), ``first_token_timeout_floor_ms``
      (500), ``first_token_timeout_min_samples`` (20): the first-token
      timeout suggested per endpoint is ``multiple * max(p99 TTFT, recent
      TTFT)``, at least the floor, once the window has that many samples
      (none without); the sidecar takes the smaller of it and its own
      configured timeout, so a hung provider costs about twice its normal
      worst case, not 30 s. Why 2 and not 3: every request that reaches a
      hung provider before it is moved away waits the whole timeout (in
      bench/bench_routing.py 3x cost the hang phase about 20% of the
      oracle's mean), while a false timeout is rare (a lognormal TTFT with
      sigma as wide as 1 exceeds twice its p99 about once in 1000) and
      costs a fallback, not an error.
    - ``blend_output_weight``: without token estimates, cost is the blended
      price ``(input + k * output) / (1 + k)`` per million tokens (k=3: chat
      workloads are output-heavy and output tokens dominate the bill).
    - ``lb_*``: the load-balance weight ``max(lb_min_weight, (c_min/c)**price_exp
      * (t_min/t)**ttft_exp * uptime**uptime_exp)``, unknown TTFT counting as
      ``lb_unknown_ttft_factor`` (see ``router_service.ranking.core``).

    The near-tie tolerance and the blend weight default to the constants the
    sidecar's fallback ranking uses too (``router_common.routing``).
    """

    near_tie_tolerance: float = DEFAULT_NEAR_TIE_TOLERANCE
    exploration_share: float = 0.05
    exploration_share_unknown: float = 0.25
    exploration_promise_exponent: float = 0.0
    exploration_min_weight: float = 0.1
    min_samples: int = 5
    min_samples_1h: int = 1
    stale_after_s: float = 1.5
    recent_max_age_s: float = 30.0
    recovered_max_failure_ratio: float = 0.1
    spread_tolerance: float = 0.25
    spread_exponent: float = 3.0
    spread_equal_tolerance: float = 0.1
    first_token_timeout_multiple: float = 2.0
    first_token_timeout_floor_ms: float = 500.0
    first_token_timeout_min_samples: int = 20
    blend_output_weight: float = DEFAULT_BLEND_OUTPUT_WEIGHT
    lb_price_exponent: float = 2.0
    lb_ttft_exponent: float = 2.0
    lb_uptime_exponent: float = 2.0
    lb_unknown_ttft_factor: float = 0.5
    lb_min_weight: float = 0.01

    def __post_init__(self) -> None:
        """Refuse a config that would make ranking misbehave, at load rather than per request."""
        checks = (
            ("near_tie_tolerance", 0.0 <= self.near_tie_tolerance < 1.0),
            ("exploration_share", 0.0 <= self.exploration_share <= 1.0),
            ("exploration_share_unknown", 0.0 <= self.exploration_share_unknown <= 1.0),
            ("exploration_promise_exponent", 0 <= self.exploration_promise_exponent <= 8),
            ("exploration_min_weight", 0 < self.exploration_min_weight <= 1),
            ("min_samples", self.min_samples >= 1),
            ("min_samples_1h", self.min_samples_1h >= 1),
            ("stale_after_s", self.stale_after_s > 0),
            ("recent_max_age_s", self.recent_max_age_s >= 0),
            ("recovered_max_failure_ratio", 0.0 <= self.recovered_max_failure_ratio <= 1.0),
            ("spread_tolerance", 0.0 <= self.spread_tolerance < 1.0),
            ("spread_exponent", 0 < self.spread_exponent <= 64),
            ("spread_equal_tolerance", 0.0 <= self.spread_equal_tolerance < 1.0),
            ("first_token_timeout_multiple", 1.0 <= self.first_token_timeout_multiple <= 100),
            (
                "first_token_timeout_floor_ms",
                0 < self.first_token_timeout_floor_ms <= MAX_FIRST_TOKEN_TIMEOUT_MS,
            ),
            ("first_token_timeout_min_samples", self.first_token_timeout_min_samples >= 1),
            ("blend_output_weight", self.blend_output_weight >= 0),
            ("lb_price_exponent", 0 <= self.lb_price_exponent <= 8),
            ("lb_ttft_exponent", 0 <= self.lb_ttft_exponent <= 8),
            ("lb_uptime_exponent", 0 <= self.lb_uptime_exponent <= 8),
            ("lb_unknown_ttft_factor", 0 < self.lb_unknown_ttft_factor <= 1),
            ("lb_min_weight", 0 < self.lb_min_weight <= 1),
        )
        for name, ok in checks:
            if not ok:
                raise ValueError(
                    f"RankingConfig.{name} out of range, got {as_json(getattr(self, name))}"
                )


DEFAULT_CONFIG = RankingConfig()
