"""Ranking: table-driven tests for every preference, reason code and flag, plus properties.

Everything is deterministic: randomness comes from seeded ``random.Random``
and statistical checks use wide, precomputed-safe bounds.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_common.catalog_model import Endpoint, Model, Provider
from router_common.domain import EndpointKey, Sort
from router_service.model import (
    RANKING_QUANTILES,
    EndpointStats,
    HealthState,
    HealthView,
    MetricSummary,
    Uptime,
)
from router_service.ranking import (
    RankedEndpoint,
    RankingConfig,
    RankingInputError,
    RankingResult,
    RoutingRequest,
    rank,
)

MODEL = "zai/glm-4.7"
NOW = 1000.0
H = HealthState


# --------------------------------------------------------------------------- builders


def endpoint(name: str, inp: float = 1.0, out: float = 2.0, zdr: bool = False) -> Endpoint:
    prov = Provider(name, f"https://{name}.example/v1", f"{name.upper()}_API_KEY", zdr)
    return Endpoint(MODEL, prov, f"{name}-glm", inp, out)


def make_model(*eps: Endpoint) -> Model:
    return Model(MODEL, tuple(eps))


def key(name: str) -> EndpointKey:
    return EndpointKey(MODEL, name)


def summary(p50: float, count: int = 50, spread: float = 1.0) -> MetricSummary:
    """Quantiles growing with q: p50 * (1 + spread * (q - 0.5)), so percentiles differ."""
    return MetricSummary(count, {q: p50 * (1 + spread * (q - 0.5)) for q in RANKING_QUANTILES})


def stats(
    ttft: float | None = None,
    tps: float | None = None,
    n5: int = 50,
    n1h: int = 500,
    ttft_1h: float | None = None,
    tps_1h: float | None = None,
    uptime: tuple[int, int] | None = (100, 100),
    last: float | None = NOW,
    spread: float = 1.0,
) -> EndpointStats:
    """p50s in 5m (``n5`` samples) and 1h (``n1h`` samples, defaulting to the 5m p50)."""
    t1 = ttft if ttft_1h is None else ttft_1h
    v1 = tps if tps_1h is None else tps_1h
    return EndpointStats(
        ttft_5m=summary(ttft, n5, spread) if ttft is not None and n5 else MetricSummary(),
        ttft_1h=summary(t1, n1h, spread) if t1 is not None and n1h else MetricSummary(),
        tps_5m=summary(tps, n5, spread) if tps is not None and n5 else MetricSummary(),
        tps_1h=summary(v1, n1h, spread) if v1 is not None and n1h else MetricSummary(),
        uptime_1h=Uptime()
        if uptime is None
        else Uptime(uptime[0], uptime[1], uptime[0] - uptime[1]),
        last_sample_at=last,
    )


def hv(
    state: HealthState,
    last_failure_at: float | None = None,
    probe: bool = False,
    reason: str = "",
) -> HealthView:
    return HealthView(
        state=state,
        reason=reason,
        last_failure_at=last_failure_at,
        consecutive_failures=0 if state is H.HEALTHY else 3,
        ejected_until=NOW + 30 if state is H.EJECTED else None,
        probe_available=probe,
    )


def run(
    req: RoutingRequest | None = None,
    eps: tuple[Endpoint, ...] = (),
    st_: dict[str, EndpointStats] | None = None,
    health: dict[str, HealthView] | None = None,
    seed: int = 0,
    config: RankingConfig | None = None,
    **req_kwargs: object,
) -> RankingResult:
    """rank() with names instead of keys, so tables stay readable."""
    req = req or RoutingRequest(MODEL, **req_kwargs)  # type: ignore[arg-type]
    return rank(
        req,
        make_model(*eps),
        {key(n): s for n, s in (st_ or {}).items()},
        {key(n): h for n, h in (health or {}).items()},
        NOW,
        random.Random(seed),
        config or RankingConfig(),
    )


def names(result: RankingResult) -> list[str]:
    return [r.endpoint.provider.name for r in result.ranked]


def excluded(result: RankingResult) -> dict[str, str]:
    return {x.endpoint.provider.name: x.reason.code for x in result.excluded}


def deprio(result: RankingResult) -> dict[str, str]:
    return {
        r.endpoint.provider.name: r.deprioritized.code
        for r in result.ranked
        if r.deprioritized is not None
    }


# Three hosts with distinct cost, ttft and tps orders.
A = endpoint("a", 1.0, 4.0, zdr=True)  # blended 3.25, ttft 300, tps 50
B = endpoint("b", 2.0, 2.0, zdr=False)  # blended 2.0,  ttft 100, tps 80
C = endpoint("c", 0.5, 6.0, zdr=True)  # blended 4.625, ttft 200, tps 200
ABC = (A, B, C)
ABC_STATS = {
    "a": stats(ttft=300, tps=50),
    "b": stats(ttft=100, tps=80),
    "c": stats(ttft=200, tps=200),
}


# --------------------------------------------------------------------------- validation

VALIDATION_CASES = [
    ("percentile", {"percentile": 0.42}),
    ("percentile", {"percentile": float("nan")}),
    ("percentile", {"percentile": 50}),
    ("sort", {"sort": "fastest"}),
    ("max_input_price", {"max_input_price": -1.0}),
    ("max_input_price", {"max_input_price": float("nan")}),
    ("max_output_price", {"max_output_price": float("inf")}),
    ("preferred_max_ttft_ms", {"preferred_max_ttft_ms": -5.0}),
    ("preferred_min_tps", {"preferred_min_tps": float("nan")}),
    ("input_tokens", {"input_tokens": -1}),
    ("max_output_tokens", {"max_output_tokens": 10**12}),
    ("input_tokens", {"input_tokens": 1.5}),
    ("ignore", {"only": frozenset({"a"}), "ignore": frozenset({"a"})}),
    ("order", {"order": ("a",), "ignore": frozenset({"a"})}),
    ("order", {"order": ("b",), "only": frozenset({"a"})}),
    ("order", {"order": ("a", "a")}),
    ("order", {"order": tuple(f"p{i}" for i in range(65))}),
    ("only", {"only": frozenset(f"p{i}" for i in range(65))}),
    ("ignore", {"ignore": frozenset({"x" * 129})}),
    ("order", {"order": ("",)}),
    ("order", {"order": "abc"}),
    ("only", {"only": ["a"]}),
    ("ignore", {"ignore": ("a",)}),
    ("only", {"only": frozenset()}),
    ("zero_data_retention", {"zero_data_retention": "yes"}),
    ("allow_fallbacks", {"allow_fallbacks": 1}),
    ("model", {"model": ""}),
]


@pytest.mark.parametrize(("field", "kwargs"), VALIDATION_CASES)
def test_validation_names_the_field(field: str, kwargs: dict) -> None:
    req = RoutingRequest(**({"model": MODEL} | kwargs))
    with pytest.raises(RankingInputError) as info:
        req.validate()
    assert info.value.field == field
    assert field in str(info.value)
    with pytest.raises(RankingInputError):  # rank() validates too
        rank(req, make_model(*ABC), {}, {}, NOW, random.Random(0))


@pytest.mark.parametrize("q", RANKING_QUANTILES)
def test_every_ranking_quantile_is_accepted(q: float) -> None:
    RoutingRequest(MODEL, percentile=q, sort=Sort.TTFT).validate()


def test_plain_string_sort_is_accepted() -> None:
    result = run(eps=ABC, st_=ABC_STATS, sort="ttft")
    assert result.sort is Sort.TTFT and names(result) == ["b", "c", "a"]


def test_request_for_another_model_is_rejected() -> None:
    with pytest.raises(RankingInputError) as info:
        rank(RoutingRequest("other/model"), make_model(*ABC), {}, {}, NOW, random.Random(0))
    assert info.value.field == "model"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"near_tie_tolerance": 1.0},
        {"exploration_share": 1.5},
        {"min_samples": 0},
        {"stale_after_s": 0},
        {"lb_min_weight": 0},
    ],
)
def test_bad_config_is_refused_at_construction(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RankingConfig(**kwargs)


# --------------------------------------------------------------------------- hard filters

FILTER_CASES = [
    # (request kwargs, expected ranked set, expected exclusions)
    ({"only": frozenset({"a", "c"})}, {"a", "c"}, {"b": "not_in_only"}),
    ({"ignore": frozenset({"b"})}, {"a", "c"}, {"b": "ignored"}),
    ({"zero_data_retention": True}, {"a", "c"}, {"b": "not_zdr"}),
    ({"max_input_price": 1.0}, {"a", "c"}, {"b": "input_price_above_max"}),
    ({"max_output_price": 4.0}, {"a", "b"}, {"c": "output_price_above_max"}),
    (
        {"max_input_price": 1.5, "max_output_price": 5.0},
        {"a"},
        {"b": "input_price_above_max", "c": "output_price_above_max"},
    ),
    ({"only": frozenset({"zzz"})}, set(), {"a": "not_in_only", "b": "not_in_only"}),
]


@pytest.mark.parametrize(("kwargs", "kept", "codes"), FILTER_CASES)
def test_hard_filters(kwargs: dict, kept: set[str], codes: dict[str, str]) -> None:
    result = run(eps=ABC, st_=ABC_STATS, **kwargs)
    assert set(names(result)) == kept
    for name, code in codes.items():
        assert excluded(result)[name] == code
    assert not result.panic


def test_price_exclusion_carries_the_numbers() -> None:
    result = run(eps=ABC, st_=ABC_STATS, max_input_price=1.0)
    (x,) = result.excluded
    assert x.reason.numbers == {"input_price_per_mtok": 2.0, "max_input_price": 1.0}
    assert "2" in x.reason.detail and "1" in x.reason.detail


def test_everything_filtered_gives_empty_ranking_not_an_error() -> None:
    result = run(eps=(B,), st_=ABC_STATS, zero_data_retention=True)
    assert result.ranked == () and excluded(result) == {"b": "not_zdr"}
    assert not result.panic


# --------------------------------------------------------------------------- health


def test_ejected_and_permitless_probing_are_excluded() -> None:
    health = {"a": hv(H.EJECTED, 990, reason="5 consecutive failures"), "c": hv(H.PROBING)}
    result = run(eps=ABC, st_=ABC_STATS, health=health)
    assert names(result) == ["b"]
    assert excluded(result) == {"a": "ejected", "c": "probe_unavailable"}
    a = next(x for x in result.excluded if x.endpoint.provider.name == "a")
    assert "5 consecutive failures" in a.reason.detail
    assert a.reason.numbers["last_failure_age_s"] == 10.0
    assert a.reason.numbers["ejected_for_s"] == 30.0


def test_probe_goes_first_degraded_goes_last_probe_listed_for_its_permit() -> None:
    health = {"b": hv(H.PROBING, probe=True), "c": hv(H.DEGRADED, reason="TTFT 4x baseline")}
    result = run(eps=ABC, st_=ABC_STATS, health=health, sort=Sort.TTFT)
    # The half-open probe is tried first (healthy endpoints are its fallback);
    # at the tail it would never be reached and never recover.
    assert names(result) == ["b", "a", "c"]
    assert deprio(result) == {"c": "degraded"}
    assert result.probing == (key("b"),)
    assert result.ranked[2].deprioritized.numbers["ttft_ms"] == 200.0


def test_probe_stays_last_under_an_explicit_order_or_without_fallbacks() -> None:
    health = {"b": hv(H.PROBING, probe=True)}
    ordered = run(eps=ABC, st_=ABC_STATS, health=health, order=("c",), sort=Sort.TTFT)
    assert names(ordered) == ["c", "a", "b"]
    assert deprio(ordered) == {"b": "probing"}
    assert ordered.probing == ()
    alone = run(eps=ABC, st_=ABC_STATS, health=health, sort=Sort.TTFT, allow_fallbacks=False)
    assert len(names(alone)) == 1 and names(alone) != ["b"]
    assert alone.probing == ()


def test_a_probing_order_provider_takes_its_probe_in_its_ordered_place() -> None:
    health = {"b": hv(H.PROBING, probe=True)}
    first = run(eps=ABC, st_=ABC_STATS, health=health, order=("b", "c"), sort=Sort.TTFT)
    assert names(first) == ["b", "c", "a"]
    assert first.probing == (key("b"),) and deprio(first) == {}
    # Not first in the order: no permit taken (the request would not reach it).
    second = run(eps=ABC, st_=ABC_STATS, health=health, order=("c", "b"), sort=Sort.TTFT)
    assert names(second) == ["c", "a", "b"]
    assert second.probing == () and deprio(second) == {"b": "probing"}
    # Without a free permit it stays excluded, as ever.
    busy = run(eps=ABC, st_=ABC_STATS, health={"b": hv(H.PROBING)}, order=("b", "c"))
    assert "b" not in names(busy) and busy.probing == ()


def test_only_one_probe_per_request() -> None:
    health = {"b": hv(H.PROBING, probe=True), "c": hv(H.PROBING, probe=True)}
    result = run(eps=ABC, st_=ABC_STATS, health=health, sort=Sort.TTFT)
    assert names(result)[0] in {"b", "c"} and names(result)[1] == "a"
    assert result.probing == (result.ranked[0].endpoint.key,)


def test_degraded_order_provider_is_moved_down_too() -> None:
    result = run(eps=ABC, st_=ABC_STATS, health={"a": hv(H.DEGRADED)}, order=("a",), sort=Sort.TTFT)
    assert names(result) == ["b", "c", "a"]


# --------------------------------------------------------------------------- panic


def test_panic_returns_ejected_least_recently_failed_first() -> None:
    health = {
        "a": hv(H.EJECTED, last_failure_at=995),
        "b": hv(H.EJECTED, last_failure_at=900),
        "c": hv(H.PROBING, last_failure_at=950),  # no permit: treated as ejected
    }
    result = run(eps=ABC, st_=ABC_STATS, health=health, sort=Sort.TTFT)
    assert result.panic and result.strategy == "panic"
    assert names(result) == ["b", "c", "a"]
    assert deprio(result) == {"b": "ejected", "c": "probe_unavailable", "a": "ejected"}
    assert "panic" in result.ranked[0].deprioritized.detail
    assert result.excluded == ()


def test_panic_never_undoes_zdr_or_other_preference_filters() -> None:
    health = {"a": hv(H.EJECTED, 990), "c": hv(H.EJECTED, 980)}  # b healthy but not ZDR
    result = run(eps=ABC, st_=ABC_STATS, health=health, zero_data_retention=True)
    assert result.panic
    assert names(result) == ["c", "a"]
    assert excluded(result) == {"b": "not_zdr"}


def test_no_panic_while_one_endpoint_is_healthy() -> None:
    result = run(eps=ABC, st_=ABC_STATS, health={"a": hv(H.EJECTED), "b": hv(H.EJECTED)})
    assert not result.panic and names(result) == ["c"]


def test_panic_with_fallbacks_disabled_keeps_one() -> None:
    health = {"a": hv(H.EJECTED, 999), "b": hv(H.EJECTED, 10)}
    result = run(eps=(A, B), st_=ABC_STATS, health=health, allow_fallbacks=False)
    assert result.panic and names(result) == ["b"]
    assert excluded(result) == {"a": "fallbacks_disabled"}


# --------------------------------------------------------------------------- sort


@pytest.mark.parametrize(
    ("sort", "expected"),
    [(Sort.COST, ["b", "a", "c"]), (Sort.TTFT, ["b", "c", "a"]), (Sort.TPS, ["c", "b", "a"])],
)
def test_sort(sort: Sort, expected: list[str]) -> None:
    result = run(eps=ABC, st_=ABC_STATS, sort=sort)
    assert names(result) == expected
    assert result.strategy == "sort" and result.sort is sort and not result.exploration


def test_sort_uses_the_chosen_percentile() -> None:
    # x: steady (p50 200, p99 ~200); y: faster median but a long tail.
    st_ = {"x": stats(ttft=200, spread=0.0), "y": stats(ttft=150, spread=2.0)}
    eps = (endpoint("x"), endpoint("y"))
    assert names(run(eps=eps, st_=st_, sort=Sort.TTFT, percentile=0.5)) == ["y", "x"]
    p99 = run(eps=eps, st_=st_, sort=Sort.TTFT, percentile=0.99)
    assert names(p99) == ["x", "y"]
    assert p99.percentile == 0.99
    assert p99.ranked[1].ttft_ms == pytest.approx(150 * (1 + 2 * 0.49))


def test_cost_uses_token_estimates_when_given() -> None:
    # Input-heavy request: B (2/2) beats A (1/4) on blended, A wins on 100k in / 10 out.
    blended = run(eps=(A, B), sort=Sort.COST)
    assert names(blended) == ["b", "a"] and blended.cost_basis == "blended_per_mtok"
    assert blended.ranked[0].cost_usd == pytest.approx((2 + 3 * 2) / 4)
    est = run(eps=(A, B), sort=Sort.COST, input_tokens=100_000, max_output_tokens=10)
    assert names(est) == ["a", "b"] and est.cost_basis == "request"
    a_in, a_out = A.input_price_per_mtok, A.output_price_per_mtok
    assert est.ranked[0].cost_usd == pytest.approx((100_000 * a_in + 10 * a_out) / 1e6)


def test_custom_blend_weight() -> None:
    result = run(eps=(A,), sort=Sort.COST, config=RankingConfig(blend_output_weight=1.0))
    assert result.ranked[0].cost_usd == pytest.approx(2.5)


@pytest.mark.parametrize(("sort", "metric"), [(Sort.TTFT, "ttft"), (Sort.TPS, "tps")])
def test_no_data_for_sort_is_deprioritized(sort: Sort, metric: str) -> None:
    st_ = dict(ABC_STATS, a=stats(n5=2, n1h=0, ttft=10, tps=999))
    result = run(eps=ABC, st_=st_, sort=sort)
    assert names(result)[-1] == "a"
    r = result.ranked[-1]
    assert r.deprioritized.code == "no_data_for_sort" and metric in r.deprioritized.detail
    assert r.deprioritized.numbers["samples"] == 2 and r.window == "none"


def test_cost_sort_never_lacks_data() -> None:
    result = run(eps=ABC, sort=Sort.COST)  # no stats at all
    assert names(result) == ["b", "a", "c"] and deprio(result) == {}


# --------------------------------------------------------------------------- order


@pytest.mark.parametrize(
    ("kwargs", "strategy"),
    [
        ({}, "load_balance"),
        ({"sort": Sort.TTFT}, "sort"),
        ({"order": ("c",)}, "order"),
        ({"order": ("c",), "sort": Sort.TTFT}, "order+sort"),
    ],
)
def test_strategy_names(kwargs: dict, strategy: str) -> None:
    assert run(eps=ABC, st_=ABC_STATS, **kwargs).strategy == strategy


def test_order_first_then_sort() -> None:
    result = run(eps=ABC, st_=ABC_STATS, order=("a", "zzz", "c"), sort=Sort.TTFT)
    assert names(result) == ["a", "c", "b"]


def test_order_then_load_balance_for_the_rest() -> None:
    eps = (*ABC, endpoint("d"))
    seen = {tuple(names(run(eps=eps, st_=ABC_STATS, order=("c",), seed=s))) for s in range(50)}
    assert all(o[0] == "c" for o in seen) and len(seen) > 1


def test_order_provider_is_not_moved_by_soft_preferences() -> None:
    result = run(eps=ABC, st_=ABC_STATS, order=("a",), sort=Sort.TTFT, preferred_max_ttft_ms=150)
    assert names(result) == ["a", "b", "c"]
    assert deprio(result) == {"c": "ttft_above_preferred"}


# --------------------------------------------------------------------------- soft preferences


def test_preferred_max_ttft_moves_down_with_numbers() -> None:
    result = run(eps=ABC, st_=ABC_STATS, sort=Sort.TPS, preferred_max_ttft_ms=250)
    assert names(result) == ["c", "b", "a"]
    r = result.ranked[-1]
    assert r.deprioritized.code == "ttft_above_preferred"
    assert r.deprioritized.numbers == {
        "ttft_ms": 300.0,
        "preferred_max_ttft_ms": 250.0,
        "percentile": 0.5,
        "samples": 50.0,
    }
    assert "300 ms" in r.deprioritized.detail and "250 ms" in r.deprioritized.detail


def test_preferred_min_tps_moves_down_at_percentile() -> None:
    result = run(eps=ABC, st_=ABC_STATS, sort=Sort.TTFT, preferred_min_tps=71, percentile=0.9)
    assert names(result) == ["b", "c", "a"]
    assert deprio(result) == {"a": "tps_below_preferred"}
    assert result.ranked[-1].deprioritized.numbers["tps"] == pytest.approx(50 * 1.4)


def test_soft_preference_never_drops() -> None:
    result = run(eps=ABC, st_=ABC_STATS, preferred_max_ttft_ms=1, preferred_min_tps=1e6)
    assert sorted(names(result)) == ["a", "b", "c"] and result.excluded == ()


def test_soft_preference_without_data_is_not_a_miss() -> None:
    result = run(eps=(A,), preferred_max_ttft_ms=1)
    assert deprio(result) == {}


# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("kw", "window", "ttft", "samples"),
    [
        ({"ttft": 100, "n5": 5, "ttft_1h": 400}, "5m", 100, 5),
        ({"ttft": 100, "n5": 4, "ttft_1h": 400, "n1h": 300}, "1h", 400, 300),
        ({"ttft": 100, "n5": 0, "n1h": 0}, "none", None, 0),
        ({"ttft": 100, "n5": 3, "n1h": 0}, "none", None, 3),
    ],
)
def test_window_selection(kw: dict, window: str, ttft: float | None, samples: int) -> None:
    r = run(eps=(A,), st_={"a": stats(**kw)}, sort=Sort.TTFT).ranked[0]
    assert (r.window, r.ttft_window, r.ttft_ms, r.ttft_samples) == (window, window, ttft, samples)


def test_window_reported_per_metric() -> None:
    s = EndpointStats(ttft_5m=summary(100, 50), tps_1h=summary(80, 20))
    r = run(eps=(A,), st_={"a": s}, sort=Sort.TPS).ranked[0]
    assert (r.ttft_window, r.tps_window, r.window) == ("5m", "1h", "1h")
    assert (r.ttft_samples, r.tps_samples) == (50, 20)


# --------------------------------------------------------------------------- near-ties


def test_near_ties_are_shuffled_across_requests() -> None:
    st_ = {"a": stats(ttft=100), "b": stats(ttft=103), "c": stats(ttft=200)}
    firsts = Counter(names(run(eps=ABC, st_=st_, sort=Sort.TTFT, seed=s))[0] for s in range(200))
    assert set(firsts) == {"a", "b"} and min(firsts.values()) > 50
    lasts = {names(run(eps=ABC, st_=st_, sort=Sort.TTFT, seed=s))[-1] for s in range(200)}
    assert lasts == {"c"}


def test_clear_winner_is_never_shuffled() -> None:
    st_ = {"a": stats(ttft=100), "b": stats(ttft=130)}  # beyond the 25% spread band
    orders = {tuple(names(run(eps=(A, B), st_=st_, sort=Sort.TTFT, seed=s))) for s in range(100)}
    assert orders == {("a", "b")}


def test_near_tie_tolerance_is_configurable() -> None:
    st_ = {"a": stats(ttft=100), "b": stats(ttft=110)}
    cfg = RankingConfig(near_tie_tolerance=0.15, spread_tolerance=0)
    orders = {
        tuple(names(run(eps=(A, B), st_=st_, sort=Sort.TTFT, seed=s, config=cfg)))
        for s in range(100)
    }
    assert orders == {("a", "b"), ("b", "a")}


def test_tps_near_ties_relative_to_the_best() -> None:
    st_ = {"a": stats(tps=200, ttft=1), "b": stats(tps=195, ttft=1), "c": stats(tps=100, ttft=1)}
    orders = {tuple(names(run(eps=ABC, st_=st_, sort=Sort.TPS, seed=s))) for s in range(100)}
    assert orders == {("a", "b", "c"), ("b", "a", "c")}


# --------------------------------------------------------------------------- load balance


def test_load_balance_weights_follow_the_documented_formula() -> None:
    st_ = {"a": stats(ttft=100), "b": stats(ttft=200, uptime=(100, 90)), "c": stats()}
    eps = (endpoint("a", 1, 1), endpoint("b", 2, 2), endpoint("c", 1, 1))
    result = run(eps=eps, st_=st_, config=RankingConfig(exploration_share=0))
    w = {r.endpoint.provider.name: r.weight for r in result.ranked}
    assert w["a"] == pytest.approx(1.0)
    assert w["b"] == pytest.approx((1 / 2) ** 2 * (100 / 200) ** 2 * 0.9**2)
    assert w["c"] == pytest.approx(0.5)  # unknown TTFT factor


def test_load_balance_prefers_cheap_fast_but_spreads_traffic() -> None:
    st_ = {"a": stats(ttft=100), "b": stats(ttft=100), "c": stats(ttft=100)}
    eps = (endpoint("a", 1, 1), endpoint("b", 1, 1), endpoint("c", 2, 2))
    cfg = RankingConfig(exploration_share=0)
    firsts = Counter(names(run(eps=eps, st_=st_, seed=s, config=cfg))[0] for s in range(3000))
    # weights 1, 1, 0.25 -> shares 4/9, 4/9, 1/9
    assert abs(firsts["a"] / 3000 - 4 / 9) < 0.05
    assert abs(firsts["b"] / 3000 - 4 / 9) < 0.05
    assert abs(firsts["c"] / 3000 - 1 / 9) < 0.03


def test_weight_floor_keeps_expensive_endpoint_in_rotation() -> None:
    eps = (endpoint("a", 1, 1), endpoint("b", 1000, 1000))
    cfg = RankingConfig(exploration_share=0)
    result = run(eps=eps, st_={"a": stats(ttft=1), "b": stats(ttft=1)}, config=cfg)
    assert {r.endpoint.provider.name: r.weight for r in result.ranked}["b"] == 0.01


# --------------------------------------------------------------------------- exploration


def test_exploration_share_puts_thin_endpoint_first_about_5_percent() -> None:
    eps = (*ABC, endpoint("thin", 100, 100))  # thin and expensive: rarely first otherwise
    st_ = dict(ABC_STATS, thin=stats(ttft=5000, n5=1))
    n = 4000
    results = [run(eps=eps, st_=st_, seed=s) for s in range(n)]
    explored = [r for r in results if r.exploration]
    assert 0.03 * n < len(explored) < 0.07 * n
    for r in explored:
        assert names(r)[0] == "thin" and r.ranked[0].exploration
        assert r.exploration_reason.code == "exploration"
        assert r.exploration_reason.numbers["samples_5m"] == 1
        assert sum(x.exploration for x in r.ranked) == 1
    assert not any(r.ranked[0].exploration for r in results if not r.exploration)


def test_stale_endpoint_is_explored() -> None:
    st_ = dict(ABC_STATS, c=stats(ttft=200, last=NOW - 301))
    cfg = RankingConfig(exploration_share=1.0)
    result = run(eps=ABC, st_=st_, config=cfg)
    assert result.exploration and names(result)[0] == "c"
    assert result.exploration_reason.numbers["last_sample_age_s"] == 301


def test_no_exploration_when_data_is_fresh_or_under_order() -> None:
    cfg = RankingConfig(exploration_share=1.0)
    assert not run(eps=ABC, st_=ABC_STATS, config=cfg).exploration
    thin = dict(ABC_STATS, c=stats(ttft=200, n5=1))
    for sort in Sort:  # every sort explores too
        assert run(eps=ABC, st_=thin, config=cfg, sort=sort).exploration
    assert not run(eps=ABC, st_=thin, config=cfg, order=("a",)).exploration
    assert not run(eps=ABC, st_=thin, config=RankingConfig(exploration_share=0)).exploration


def test_exploration_skips_unhealthy_endpoints() -> None:
    thin = dict(ABC_STATS, c=stats(ttft=200, n5=1))
    cfg = RankingConfig(exploration_share=1.0)
    result = run(eps=ABC, st_=thin, config=cfg, health={"c": hv(H.DEGRADED)})
    assert not result.exploration and names(result)[-1] == "c"


def test_a_free_probe_goes_first_even_when_exploration_would_fire() -> None:
    # Exploration used to take the first place and leave the probing endpoint at the
    # tail without its permit: a probe no replica was granted (found by the fleet test).
    thin = dict(ABC_STATS, c=stats(ttft=200, n5=1))
    cfg = RankingConfig(exploration_share=1.0)
    for seed in range(50):
        result = run(
            eps=ABC, st_=thin, config=cfg, seed=seed, health={"a": hv(H.PROBING, probe=True)}
        )
        assert names(result)[0] == "a" and result.probing == (ABC[0].key,)
        assert not result.exploration


def test_a_ranking_that_places_a_probe_still_carries_the_exploration_share() -> None:
    # The probe takes this request's first place, but a client reusing the ranking
    # goes on exploring: with the share withheld during every probe (seconds of
    # rankings in a recovery), a recovered endpoint was left unexplored meanwhile.
    thin = dict(ABC_STATS, c=stats(ttft=200, n5=1))
    cfg = RankingConfig(exploration_share=0.3)
    result = run(eps=ABC, st_=thin, config=cfg, seed=1, health={"a": hv(H.PROBING, probe=True)})
    assert names(result)[0] == "a" and not result.exploration
    assert result.exploration_share == 0.3
    assert [e.key.provider for e in result.ranked if e.explorable] == ["c"]


# --------------------------------------------------------------------------- fallbacks


def test_allow_fallbacks_false_returns_only_the_first() -> None:
    result = run(eps=ABC, st_=ABC_STATS, sort=Sort.TTFT, allow_fallbacks=False)
    assert names(result) == ["b"]
    assert excluded(result) == {"c": "fallbacks_disabled", "a": "fallbacks_disabled"}
    assert [x.reason.numbers["position"] for x in result.excluded] == [2, 3]


def test_allow_fallbacks_false_with_order_keeps_the_ordered_providers() -> None:
    """OpenRouter: false means "only the primary provider, or your custom providers in
    `order`": with `order` the listed providers stay (in that order), no other does."""
    result = run(eps=ABC, st_=ABC_STATS, sort=Sort.TTFT, order=("c", "a"), allow_fallbacks=False)
    assert names(result) == ["c", "a"]
    assert excluded(result) == {"b": "fallbacks_disabled"}
    result = run(eps=ABC, st_=ABC_STATS, sort=Sort.TTFT, order=("c",), allow_fallbacks=False)
    assert names(result) == ["c"]


def test_fallbacks_disabled_drops_the_probe_permit_too() -> None:
    result = run(
        eps=ABC, st_=ABC_STATS, health={"a": hv(H.PROBING, probe=True)}, allow_fallbacks=False
    )
    assert result.probing == () and names(result) != ["a"]


# --------------------------------------------------------------------------- result shape


def test_ranked_entries_are_named_and_immutable() -> None:
    entry = run(eps=ABC, st_=ABC_STATS, sort=Sort.TTFT).ranked[0]
    assert type(entry) is RankedEndpoint
    assert entry == RankedEndpoint(*entry) and entry.key == entry.endpoint.key
    assert entry._replace(exploration=True).exploration is True and entry.exploration is False
    with pytest.raises(AttributeError):
        entry.tps = 3.0  # type: ignore[misc]


def test_result_explains_every_placement() -> None:
    health = {"c": hv(H.DEGRADED, reason="slow"), "a": hv(H.EJECTED, 990)}
    result = run(eps=(*ABC, endpoint("d")), st_=ABC_STATS, health=health, ignore=frozenset("d"))
    assert result.strategy == "load_balance" and result.percentile == 0.5
    assert {x.reason.code for x in result.excluded} == {"ignored", "ejected"}
    assert [r.deprioritized.code for r in result.deprioritized if r.deprioritized] == ["degraded"]
    assert result.ranked[0].ttft_samples == 50
    assert result.panic is False and result.exploration is False
    assert result.execution_order == tuple(key(n) for n in names(result))
    assert [r.endpoint.provider.name for r in result.deprioritized] == ["c"]


def test_model_with_no_endpoints() -> None:
    result = run(eps=())
    assert result.ranked == () and result.excluded == () and not result.panic


def test_unknown_uptime_is_none_not_one() -> None:
    r = run(eps=(A,), st_={"a": stats(uptime=None)}).ranked[0]
    assert r.uptime is None
    assert run(eps=(A,), st_={"a": stats(uptime=(10, 9))}).ranked[0].uptime == 0.9


# --------------------------------------------------------------------------- properties

PROVIDERS = [f"p{i}" for i in range(6)]

health_views = st.sampled_from(
    [
        hv(H.HEALTHY),
        hv(H.DEGRADED),
        hv(H.EJECTED, 900),
        hv(H.EJECTED, 990),
        hv(H.PROBING, 950),
        hv(H.PROBING, 950, probe=True),
    ]
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[RoutingRequest, Model, dict, dict, int]:
    chosen = draw(st.lists(st.sampled_from(PROVIDERS), min_size=0, max_size=6, unique=True))
    eps = tuple(
        endpoint(
            n,
            draw(st.floats(0, 20, allow_nan=False)),
            draw(st.floats(0, 60, allow_nan=False)),
            zdr=draw(st.booleans()),
        )
        for n in chosen
    )
    st_map = {}
    for n in chosen:
        if draw(st.booleans()):
            st_map[key(n)] = stats(
                ttft=draw(st.floats(1, 5000)),
                tps=draw(st.floats(1, 500)),
                n5=draw(st.integers(0, 20)),
                n1h=draw(st.integers(0, 100)),
                last=draw(st.one_of(st.none(), st.floats(0, NOW))),
            )
    health_map = {key(n): draw(health_views) for n in chosen}
    only = draw(st.one_of(st.none(), st.frozensets(st.sampled_from(PROVIDERS), min_size=1)))
    ignorable = [p for p in PROVIDERS if only is None or p not in only]
    ignore = draw(st.frozensets(st.sampled_from(ignorable))) if ignorable else frozenset()
    orderable = [p for p in PROVIDERS if (only is None or p in only) and p not in ignore]
    order = tuple(draw(st.permutations(orderable))[: draw(st.integers(0, len(orderable)))])
    req = RoutingRequest(
        MODEL,
        sort=draw(st.one_of(st.none(), st.sampled_from(list(Sort)))),
        percentile=draw(st.sampled_from(RANKING_QUANTILES)),
        order=order,
        only=only,
        ignore=ignore,
        zero_data_retention=draw(st.booleans()),
        max_input_price=draw(st.one_of(st.none(), st.floats(0, 20))),
        max_output_price=draw(st.one_of(st.none(), st.floats(0, 60))),
        preferred_max_ttft_ms=draw(st.one_of(st.none(), st.floats(0, 5000))),
        preferred_min_tps=draw(st.one_of(st.none(), st.floats(0, 500))),
        allow_fallbacks=draw(st.booleans()),
        input_tokens=draw(st.integers(0, 100_000)),
        max_output_tokens=draw(st.integers(0, 10_000)),
    )
    return req, make_model(*eps), st_map, health_map, draw(st.integers(0, 2**32))


def _passes_preferences(req: RoutingRequest, e: Endpoint) -> bool:
    name = e.provider.name
    return (
        (req.only is None or name in req.only)
        and name not in req.ignore
        and (not req.zero_data_retention or e.provider.zero_data_retention)
        and (req.max_input_price is None or e.input_price_per_mtok <= req.max_input_price)
        and (req.max_output_price is None or e.output_price_per_mtok <= req.max_output_price)
    )


def _routable(h: HealthView) -> bool:
    return h.state in (H.HEALTHY, H.DEGRADED) or (h.state is H.PROBING and h.probe_available)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_zdr_request_never_gets_a_non_zdr_endpoint(scenario: tuple) -> None:
    req, model, st_map, health_map, seed = scenario
    result = rank(req, model, st_map, health_map, NOW, random.Random(seed))
    for r in result.ranked:
        assert _passes_preferences(req, r.endpoint)
        if req.zero_data_retention:
            assert r.endpoint.provider.zero_data_retention


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_result_is_a_permutation_of_the_filtered_candidates(scenario: tuple) -> None:
    req, model, st_map, health_map, seed = scenario
    result = rank(req, model, st_map, health_map, NOW, random.Random(seed))
    ranked = [r.endpoint for r in result.ranked]
    every = ranked + [x.endpoint for x in result.excluded]
    assert sorted(e.key for e in every) == sorted(e.key for e in model.endpoints)
    passing = [e for e in model.endpoints if _passes_preferences(req, e)]
    healthy = [e for e in passing if _routable(health_map[e.key])]
    expected = healthy or passing  # panic: the unhealthy ones rather than nothing
    assert result.panic == (not healthy and bool(passing))
    if req.allow_fallbacks:
        assert sorted(e.key for e in ranked) == sorted(e.key for e in expected)
    else:  # the first only, or a leading run of providers `order` names
        assert bool(ranked) == bool(expected)
        assert all(e in expected for e in ranked)
        if len(ranked) > 1:
            assert all(e.provider.name in req.order for e in ranked)
    # At most one probe per request, and it is tried first.
    assert len(result.probing) <= 1
    if result.probing:
        assert result.ranked[0].endpoint.key == result.probing[0]
        assert result.ranked[0].health is H.PROBING


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_order_providers_come_first_within_their_health_tier(scenario: tuple) -> None:
    req, model, st_map, health_map, seed = scenario
    req = RoutingRequest(**{**_fields(req), "allow_fallbacks": True})
    result = rank(req, model, st_map, health_map, NOW, random.Random(seed))
    if result.panic:
        return
    tier_of = {H.HEALTHY: 0, H.DEGRADED: 1, H.PROBING: 2}
    if req.order and result.probing:  # an ordered probe only takes its own, first, place
        probe = result.ranked[0]
        assert probe.endpoint.provider.name == req.order[0] or all(
            name not in {r.endpoint.provider.name for r in result.ranked}
            for name in req.order[: req.order.index(probe.endpoint.provider.name)]
        )
    assert not (req.order and result.exploration)  # an exploration pick never jumps an order
    # A probe or an exploration pick (a stale degraded endpoint may be one) leads.
    start = len(result.probing) + (1 if result.exploration else 0)
    tiers = [tier_of[r.health] for r in result.ranked[start:]]
    assert tiers == sorted(tiers)  # health tiers never interleave
    for tier in set(tiers):
        group = [
            r.endpoint.provider.name for r in result.ranked[start:] if tier_of[r.health] == tier
        ]
        ordered = [n for n in group if n in req.order]
        assert group[: len(ordered)] == ordered  # order providers lead their tier
        assert ordered == sorted(ordered, key=req.order.index)  # in `order` order


def _fields(req: RoutingRequest) -> dict:
    return {f: getattr(req, f) for f in RoutingRequest.__slots__}


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 8),
    sort=st.one_of(st.none(), st.sampled_from(list(Sort))),
    ttft=st.floats(1, 5000),
    tps=st.floats(1, 500),
    seed=st.integers(0, 2**32),
)
def test_property_equal_providers_share_traffic(
    n: int, sort: Sort | None, ttft: float, tps: float, seed: int
) -> None:
    eps = tuple(endpoint(f"p{i}", 1.0, 2.0) for i in range(n))
    same = stats(ttft=ttft, tps=tps)
    st_map = {e.key: same for e in eps}
    rng = random.Random(seed)
    model = make_model(*eps)
    req = RoutingRequest(MODEL, sort=sort)
    calls = 40 * n
    firsts = Counter(rank(req, model, st_map, {}, NOW, rng).ranked[0].key for _ in range(calls))
    assert len(firsts) >= 2
    assert max(firsts.values()) < calls * min(0.95, 3.0 / n)


@settings(max_examples=100, deadline=None)
@given(
    order=st.lists(st.text(min_size=0, max_size=200), max_size=100),
    percentile=st.floats(allow_nan=True),
    price=st.floats(allow_nan=True, allow_infinity=True),
)
def test_property_bad_input_raises_ranking_input_error_only(
    order: list[str], percentile: float, price: float
) -> None:
    req = RoutingRequest(MODEL, order=tuple(order), percentile=percentile, max_input_price=price)
    try:
        result = rank(req, make_model(*ABC), {}, {}, NOW, random.Random(0))
    except RankingInputError as e:
        assert e.field in {"order", "percentile", "max_input_price"}
    else:
        assert len(result.ranked) + len(result.excluded) == 3
        assert math.isfinite(price) and price >= 0 and percentile in RANKING_QUANTILES
