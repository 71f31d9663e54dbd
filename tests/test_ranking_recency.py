"""Ranking on recent data: the recent estimate, exploration under every strategy, the
near-best spread, degraded endpoints ranked on fresh evidence, suggested timeouts."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from router_common.domain import Sort
from router_service.model import EndpointStats, RecentEstimate, Uptime
from router_service.ranking import RankingConfig
from router_service.sketches.recent import RecentConfig, RecentTracker
from tests.test_ranking import ABC, ABC_STATS, NOW, H, hv, names, run, stats

NO_EXPLORE = RankingConfig(exploration_share=0, exploration_share_unknown=0)


def with_recent(
    s: EndpointStats, ttft: float, age: float = 0.0, fail: float = 0.0
) -> EndpointStats:
    return dataclasses.replace(s, recent=RecentEstimate(ttft, NOW - age, fail, NOW - age, 50))


# --------------------------------------------------------------------------- recent tracker


def test_recent_estimate_follows_a_slowdown_fast_and_a_speedup_within_seconds() -> None:
    tr = RecentTracker(RecentConfig(tau_s=3.0, tau_up_s=1.0))
    t = 0.0
    for _ in range(200):  # 10 s at 20 rps of 100 ms
        tr.record(t, False, 100.0)
        t += 0.05
    assert tr.estimate().ttft_ms == pytest.approx(100.0)
    for _ in range(40):  # 2 s at 1000 ms: the "peak" side believes it within ~2 tau_up
        tr.record(t, False, 1000.0)
        t += 0.05
    assert tr.estimate().ttft_ms > 800.0
    for _ in range(200):  # 10 s back at 100 ms
        tr.record(t, False, 100.0)
        t += 0.05
    assert tr.estimate().ttft_ms < 110.0


def test_one_outlier_does_not_flip_the_estimate_and_a_late_sample_replaces_it() -> None:
    tr = RecentTracker()
    for i in range(100):
        tr.record(i * 0.05, False, 100.0)
    tr.record(5.0, False, 3000.0)  # one slow answer among many
    assert tr.estimate().ttft_ms < 300.0
    tr.record(60.0, False, 150.0)  # after a minute of silence: the new value stands
    assert tr.estimate().ttft_ms == pytest.approx(150.0, rel=0.01)
    assert tr.estimate().ttft_at == 60.0


def test_the_first_samples_after_a_replace_are_averaged_not_dominated_by_the_first() -> None:
    tr = RecentTracker(RecentConfig(tau_s=3.0, tau_up_s=2.0))
    tr.record(0.0, False, 160.0)  # one slow first answer of an endpoint that does 100 ms
    for i in range(1, 6):
        tr.record(i * 0.1, False, 100.0)
    # the plain mean of the six; the time-weighted average alone still said ~147 ms
    assert tr.estimate().ttft_ms == pytest.approx((160.0 + 5 * 100.0) / 6)
    for i in range(6, 200):  # then the time-weighted average: a slowdown still shows fast
        tr.record(i * 0.1, False, 100.0)
    for i in range(200, 220):  # 2 s of 6x slower answers
        tr.record(i * 0.1, False, 600.0)
    assert tr.estimate().ttft_ms > 300.0


def test_recent_failure_ratio_decays_and_client_errors_do_not_count() -> None:
    tr = RecentTracker(RecentConfig(tau_fail_s=5.0))
    for i in range(20):
        tr.record(i * 0.1, True, None)
    assert tr.estimate().failure_ratio > 0.9
    tr.record(2.0, None, None)  # the caller's fault: neither
    assert tr.estimate().failure_ratio > 0.9
    for i in range(100):
        tr.record(2.0 + i * 0.2, False, 100.0)
    assert tr.estimate().failure_ratio < 0.05


def test_a_sample_after_a_silence_replaces_the_estimate_a_sample_in_traffic_does_not() -> None:
    tr = RecentTracker(RecentConfig(replace_after_s=2.0))
    for i in range(60):  # 3 s at 20 rps of 480 ms (a slowed provider)
        tr.record(i * 0.05, False, 480.0)
    tr.record(2.95 + 1.0, False, 80.0)  # 1 s later: averaged in, not believed at once
    assert 80.0 < tr.estimate().ttft_ms < 480.0
    tr.record(3.95 + 2.0, False, 80.0)  # 2 s of silence: the new value is all we know
    assert tr.estimate().ttft_ms == pytest.approx(80.0)


def test_a_first_token_timeout_pulls_the_estimate_toward_its_wait() -> None:
    tr = RecentTracker()  # timeout_weight 0.5
    for i in range(100):
        tr.record(i * 0.05, False, 80.0)
    before = tr.estimate()
    tr.record(5.0, True, None, 500.0)  # gave up after 500 ms without a first token
    after = tr.estimate()
    assert after.ttft_ms == pytest.approx(80.0 + 0.5 * (500.0 - 80.0), rel=0.02)
    # not an answer: when it last answered and how many answers it has stay as they were
    assert (after.ttft_at, after.samples) == (before.ttft_at, before.samples)
    assert after.failure_ratio > before.failure_ratio
    tr.record(5.0, True, None, 100.0)  # a wait below the estimate says nothing new
    tr.record(5.0, True, None, float("nan"))
    assert tr.estimate().ttft_ms == after.ttft_ms
    tr.record(5.0 + 2.0, False, 85.0)  # its next answer after a silence stands alone
    assert tr.estimate().ttft_ms == pytest.approx(85.0)


def test_a_timeout_wait_is_capped_and_needs_an_estimate() -> None:
    tr = RecentTracker(RecentConfig(timeout_weight=1.0))
    tr.record(0.0, True, None, 500.0)  # nothing measured yet: no level to raise
    assert tr.estimate().ttft_ms is None
    tr.record(1.0, False, 100.0)
    tr.record(1.0, True, None, 1e12)
    assert tr.estimate().ttft_ms == 600_000.0  # MAX_TTFT_MS, the contract's limit


@pytest.mark.parametrize(
    "field", ["tau_s", "tau_up_s", "tau_fail_s", "replace_after_s", "timeout_weight"]
)
@pytest.mark.parametrize("bad", [0, -1, float("nan"), True])
def test_recent_config_rejects_bad_values(field: str, bad: object) -> None:
    with pytest.raises(ValueError, match=field):
        RecentConfig(**{field: bad})  # type: ignore[arg-type]


def test_recent_config_timeout_weight_is_at_most_one() -> None:
    with pytest.raises(ValueError, match=r"timeout_weight must be <= 1, got 1\.5"):
        RecentConfig(timeout_weight=1.5)


# --------------------------------------------------------------------------- ranking on it


def test_fresh_recent_estimate_replaces_the_windows_and_keeps_the_percentile_shape() -> None:
    st_ = dict(ABC_STATS, b=with_recent(ABC_STATS["b"], 400.0))  # b slowed 4x, seconds ago
    result = run(eps=ABC, st_=st_, sort=Sort.TTFT, config=NO_EXPLORE)
    assert names(result) == ["c", "a", "b"]
    b = result.ranked[-1]
    assert b.window == "recent" and b.ttft_ms == pytest.approx(400.0)
    p90 = run(eps=ABC, st_=st_, sort=Sort.TTFT, percentile=0.9, config=NO_EXPLORE)
    # summary(): p90 = p50 * 1.4, so the recent level scaled by the windows' p90/p50
    assert p90.ranked[-1].ttft_ms == pytest.approx(400.0 * 1.4)


def test_old_recent_estimate_is_ignored() -> None:
    st_ = dict(ABC_STATS, b=with_recent(ABC_STATS["b"], 400.0, age=31.0))
    result = run(eps=ABC, st_=st_, sort=Sort.TTFT, config=NO_EXPLORE)
    assert names(result)[0] == "b" and result.ranked[0].window == "5m"


def test_degraded_endpoint_with_fresh_fast_evidence_is_ranked_like_a_healthy_one() -> None:
    st_ = dict(ABC_STATS, b=with_recent(ABC_STATS["b"], 100.0, age=1.0))
    degraded_before = {"b": hv(H.DEGRADED)._replace(since=NOW - 20)}
    result = run(eps=ABC, st_=st_, sort=Sort.TTFT, health=degraded_before, config=NO_EXPLORE)
    assert names(result)[0] == "b" and result.ranked[0].deprioritized is None
    # Evidence older than the degradation, or a high recent failure ratio: still moved down.
    degraded_after = {"b": hv(H.DEGRADED)._replace(since=NOW - 0.5)}
    result = run(eps=ABC, st_=st_, sort=Sort.TTFT, health=degraded_after, config=NO_EXPLORE)
    assert names(result)[-1] == "b"
    failing = dict(ABC_STATS, b=with_recent(ABC_STATS["b"], 100.0, age=1.0, fail=0.3))
    result = run(eps=ABC, st_=failing, sort=Sort.TTFT, health=degraded_before, config=NO_EXPLORE)
    assert names(result)[-1] == "b"


# --------------------------------------------------------------------------- exploration


def test_sort_explores_unmeasured_endpoints_at_the_larger_share_and_marks_them() -> None:
    st_ = {"a": stats(ttft=300), "b": stats(ttft=100)}  # c: never measured
    n = 2000
    results = [run(eps=ABC, st_=st_, sort=Sort.TTFT, seed=s) for s in range(n)]
    explored = [r for r in results if r.exploration]
    assert 0.2 * n < len(explored) < 0.3 * n  # exploration_share_unknown = 0.25
    for r in explored:
        assert names(r)[0] == "c" and r.ranked[0].exploration
        assert r.exploration_reason is not None and r.exploration_reason.code == "exploration"
    assert all(r.exploration_share == 0.25 for r in results)
    assert all(
        {e.endpoint.provider.name for e in r.ranked if e.explorable} == {"c"} for r in results
    )


def test_stale_endpoint_is_explored_under_sort_at_the_base_share() -> None:
    st_ = dict(ABC_STATS, a=stats(ttft=300, last=NOW - 4))  # stale after 1.5 s
    n = 2000
    results = [run(eps=ABC, st_=st_, sort=Sort.COST, seed=s) for s in range(n)]
    explored = [r for r in results if r.exploration]
    assert 0.03 * n < len(explored) < 0.07 * n
    assert all(names(r)[0] == "a" for r in explored)


def test_stale_degraded_endpoint_is_explored_so_its_recovery_is_seen() -> None:
    st_ = dict(ABC_STATS, b=stats(ttft=100, last=NOW - 11))
    cfg = RankingConfig(exploration_share=1.0)
    result = run(eps=ABC, st_=st_, sort=Sort.TTFT, health={"b": hv(H.DEGRADED)}, config=cfg)
    assert result.exploration and names(result)[0] == "b"
    for state in (H.EJECTED, H.PROBING):  # never explored: health decides those
        result = run(eps=ABC, st_=st_, sort=Sort.TTFT, health={"b": hv(state)}, config=cfg)
        assert not result.ranked[0].exploration or names(result)[0] != "b"


def test_order_and_panic_never_explore() -> None:
    cfg = RankingConfig(exploration_share=1.0, exploration_share_unknown=1.0)
    result = run(eps=ABC, st_={}, order=("a",), sort=Sort.TTFT, config=cfg)
    assert not result.exploration and result.exploration_share == 0
    assert not any(e.explorable for e in result.ranked)
    ejected = {n: hv(H.EJECTED) for n in "abc"}
    result = run(eps=ABC, st_={}, sort=Sort.TTFT, health=ejected, config=cfg)
    assert result.panic and not result.exploration


def test_measured_but_failing_endpoint_is_not_unknown() -> None:
    failing = EndpointStats(uptime_1h=Uptime(10, 0, 10), last_sample_at=NOW)
    st_ = dict(ABC_STATS, c=failing)
    results = [run(eps=ABC, st_=st_, sort=Sort.TTFT, seed=s) for s in range(200)]
    assert all(r.exploration_share == 0.05 for r in results)


# --------------------------------------------------------------------------- spread


def test_equal_endpoints_share_first_place_evenly_under_sort_ttft() -> None:
    eps = ABC
    st_ = {n: stats(ttft=100) for n in "abc"}
    firsts = Counter(
        names(run(eps=eps, st_=st_, sort=Sort.TTFT, seed=s, config=NO_EXPLORE))[0]
        for s in range(3000)
    )
    for n in "abc":
        assert 0.28 < firsts[n] / 3000 < 0.39, firsts


def test_spread_weights_follow_the_documented_formula_and_band() -> None:
    st_ = {
        "a": stats(ttft=120, spread=0),
        "b": stats(ttft=100, spread=0),
        "c": stats(ttft=130, spread=0),
    }
    result = run(eps=ABC, st_=st_, sort=Sort.TTFT, config=NO_EXPLORE)
    w = {e.endpoint.provider.name: e.weight for e in result.ranked}
    assert w["b"] == pytest.approx(1.0)
    assert w["a"] == pytest.approx((100 / 120) ** 3)
    assert w["c"] is None  # 30% slower: beyond the 25% band, strict order
    assert names(result)[-1] == "c"
    tps = {"a": stats(tps=85, ttft=1), "b": stats(tps=100, ttft=1), "c": stats(tps=50, ttft=1)}
    result = run(eps=ABC, st_=tps, sort=Sort.TPS, config=NO_EXPLORE)
    w = {e.endpoint.provider.name: e.weight for e in result.ranked}
    assert w["a"] == pytest.approx(0.85**3) and w["c"] is None


def test_endpoints_within_the_equal_tolerance_weigh_the_same() -> None:
    st_ = {
        "a": stats(ttft=108, spread=0),  # within 10%: noise between equals, weight 1
        "b": stats(ttft=100, spread=0),
        "c": stats(ttft=112, spread=0),  # beyond: (best/value)**3
    }
    w = {
        e.endpoint.provider.name: e.weight
        for e in run(eps=ABC, st_=st_, sort=Sort.TTFT, config=NO_EXPLORE).ranked
    }
    assert w == {"a": 1.0, "b": 1.0, "c": pytest.approx((100 / 112) ** 3)}
    strict = dataclasses.replace(NO_EXPLORE, spread_equal_tolerance=0.0)
    w = {
        e.endpoint.provider.name: e.weight
        for e in run(eps=ABC, st_=st_, sort=Sort.TTFT, config=strict).ranked
    }
    assert w["a"] == pytest.approx((100 / 108) ** 3)


def _lone(s: EndpointStats, ttft: float) -> EndpointStats:
    """``s`` whose recent estimate is one answer given after a silence."""
    return dataclasses.replace(s, recent=RecentEstimate(ttft, NOW - 0.5, 0.0, NOW - 0.5, 50, True))


def test_one_answer_after_a_silence_leads_but_does_not_share_the_band() -> None:
    base = {n: stats(ttft=100, spread=0) for n in "abc"}
    # b and c are well known; a answered once after a silence, 5% slower than the best:
    # within the band by value, but one answer's spread covers that.
    st_ = dict(base, a=_lone(base["a"], 105.0), b=with_recent(base["b"], 100.0))
    st_["c"] = with_recent(base["c"], 160.0)
    firsts = Counter()
    for seed in range(400):
        result = run(eps=ABC, st_=st_, sort=Sort.TTFT, seed=seed, config=NO_EXPLORE)
        w = {e.endpoint.provider.name: e.weight for e in result.ranked}
        assert w["a"] is None and w["c"] is None, w
        firsts[names(result)[0]] += 1
    assert firsts == {"b": 400}
    # Its second answer makes it an ordinary estimate: back in the band.
    st_["a"] = with_recent(base["a"], 105.0)
    w = {
        e.endpoint.provider.name: e.weight
        for e in run(eps=ABC, st_=st_, sort=Sort.TTFT, config=NO_EXPLORE).ranked
    }
    assert w["a"] == 1.0 and w["b"] == 1.0
    # The best value leads even when it is lone (a recovered provider), and the band
    # forms around it as usual.
    st_["a"] = _lone(base["a"], 95.0)
    result = run(eps=ABC, st_=st_, sort=Sort.TTFT, config=NO_EXPLORE)
    w = {e.endpoint.provider.name: e.weight for e in result.ranked}
    assert w["a"] == 1.0 and w["b"] == 1.0
    st_["a"] = _lone(base["a"], 60.0)
    assert names(run(eps=ABC, st_=st_, sort=Sort.TTFT, config=NO_EXPLORE))[0] == "a"
    # When the best is one answer too (an incident just moved the traffic), every value
    # is a guess: the band is drawn as usual, so answers arrive from both.
    st_ = dict(base, a=_lone(base["a"], 105.0), b=_lone(base["b"], 100.0))
    st_["c"] = with_recent(base["c"], 160.0)
    w = {
        e.endpoint.provider.name: e.weight
        for e in run(eps=ABC, st_=st_, sort=Sort.TTFT, config=NO_EXPLORE).ranked
    }
    assert w == {"a": 1.0, "b": 1.0, "c": None}


def test_the_tracker_marks_a_replacing_answer_lone_until_the_next() -> None:
    tr = RecentTracker()
    tr.record(0.0, False, 100.0)
    assert not tr.estimate().lone  # the first answer ever replaces nothing
    tr.record(0.05, False, 100.0)
    tr.record(3.0, False, 120.0)  # after a silence: it replaces the estimate
    assert tr.estimate().lone and tr.estimate().ttft_ms == 120.0
    tr.record(3.0, True, None, 500.0)  # a timeout is not an answer (it raised the estimate)
    assert tr.estimate().lone
    tr.record_many(3.1, [(False, 160.0, None)])
    assert not tr.estimate().lone


def test_an_answer_far_below_a_thin_estimate_replaces_it() -> None:
    """A collapse (below ``collapse_ratio`` of an estimate of at most
    ``collapse_max_samples`` answers since its replace) is a change: replaced, lone."""
    tr = RecentTracker()
    tr.record(0.0, False, 100.0)
    tr.record(3.0, False, 550.0)  # an exploration during a slowdown: replaces, run 1
    tr.record(3.5, False, 540.0)  # the next, 0.5 s later: averaged, run 2
    assert not tr.estimate().lone
    tr.record(4.0, False, 90.0)  # recovered: half of ~545 or less
    assert tr.estimate().ttft_ms == 90.0 and tr.estimate().lone
    # Not below half: averaged as before.
    tr2 = RecentTracker()
    tr2.record(0.0, False, 100.0)
    tr2.record(3.0, False, 550.0)
    tr2.record(3.5, False, 300.0)
    assert 300.0 < tr2.estimate().ttft_ms < 550.0 and not tr2.estimate().lone
    # An estimate resting on more answers (an endpoint with traffic) is only averaged.
    tr3 = RecentTracker()
    for i in range(3):
        tr3.record(3.0 + 0.1 * i, False, 550.0)
    tr3.record(3.4, False, 90.0)
    assert tr3.estimate().ttft_ms > 300.0


def test_no_spread_weights_under_cost_or_order() -> None:
    st_ = {n: stats(ttft=100) for n in "abc"}
    assert all(e.weight is None for e in run(eps=ABC, st_=st_, sort=Sort.COST).ranked)
    res = run(eps=ABC, st_=st_, sort=Sort.TTFT, order=("a",))
    assert all(e.weight is None for e in res.ranked)


# --------------------------------------------------------------------------- timeouts


def test_first_token_timeout_is_a_multiple_of_p99_with_a_floor() -> None:
    # summary(): p99 = p50 * 1.49, p95 = p50 * 1.45
    st_ = {"a": stats(ttft=1000), "b": stats(ttft=100), "c": stats(ttft=100, n5=5, n1h=5)}
    result = run(eps=ABC, st_=st_, sort=Sort.TTFT, config=NO_EXPLORE)
    by = {e.endpoint.provider.name: e for e in result.ranked}
    assert by["a"].first_token_timeout_ms == pytest.approx(2 * 1490.0)
    assert by["a"].hedge_after_ms == pytest.approx(1450.0)
    assert by["b"].first_token_timeout_ms == 500.0  # the floor
    assert by["c"].first_token_timeout_ms is None and by["c"].hedge_after_ms is None  # too few


def test_first_token_timeout_follows_a_recent_slowdown() -> None:
    st_ = dict(ABC_STATS, b=with_recent(ABC_STATS["b"], 2000.0))
    result = run(eps=ABC, st_=st_, sort=Sort.TTFT, config=NO_EXPLORE)
    b = next(e for e in result.ranked if e.endpoint.provider.name == "b")
    assert b.first_token_timeout_ms == pytest.approx(2 * 2000.0)  # multiple * max(p99, recent)


@pytest.mark.parametrize(
    "field,bad",
    [
        ("exploration_share_unknown", 1.5),
        ("spread_tolerance", 1.0),
        ("spread_exponent", 0),
        ("spread_equal_tolerance", 1.0),
        ("first_token_timeout_multiple", 0.5),
        ("first_token_timeout_floor_ms", 0),
        ("first_token_timeout_min_samples", 0),
        ("recent_max_age_s", -1),
        ("recovered_max_failure_ratio", 2),
    ],
)
def test_ranking_config_rejects_out_of_range_knobs(field: str, bad: object) -> None:
    with pytest.raises(ValueError, match=field):
        RankingConfig(**{field: bad})  # type: ignore[arg-type]


def test_unmeasured_endpoints_get_equal_weights_so_a_client_redraws_them() -> None:
    result = run(eps=ABC, st_={}, sort=Sort.TTFT, config=NO_EXPLORE)  # a fresh router
    assert [e.weight for e in result.ranked] == [1.0, 1.0, 1.0]
    measured = run(eps=ABC, st_={"a": stats(ttft=100)}, sort=Sort.TTFT, config=NO_EXPLORE)
    assert all(e.weight is None for e in measured.ranked)  # one measured leads: no draw


# --------------------------------------------------------------------------- exploration by promise


def test_exploration_prefers_the_stale_endpoint_with_the_best_long_run_ttft() -> None:
    # b leads now; a (usually 100 ms, lately slow) and c (always 300 ms) are both stale.
    st_ = {
        "a": stats(ttft=480, ttft_1h=100, last=NOW - 5),
        "b": stats(ttft=200),
        "c": stats(ttft=300, last=NOW - 5),
    }
    cfg = RankingConfig(exploration_share=1.0, exploration_promise_exponent=2)
    results = [run(eps=ABC, st_=st_, sort=Sort.TTFT, config=cfg, seed=s) for s in range(2000)]
    weights = {e.endpoint.provider.name: e.exploration_weight for e in results[0].ranked}
    assert weights == {"a": 1.0, "b": None, "c": pytest.approx(0.111, abs=0.001)}
    picks = Counter(names(r)[0] for r in results if r.exploration)
    assert len(results) == sum(picks.values())
    assert 0.85 < picks["a"] / 2000 < 0.95  # 1 / (1 + 1/9) = 0.9


def test_exploration_weight_has_a_floor_and_never_measured_counts_as_best() -> None:
    st_ = {"a": stats(ttft=2000, last=NOW - 5), "b": stats(ttft=100)}  # c: never measured
    promise = RankingConfig(exploration_promise_exponent=2)
    result = run(eps=ABC, st_=st_, sort=Sort.TTFT, config=promise)
    weights = {e.endpoint.provider.name: e.exploration_weight for e in result.ranked}
    assert weights == {"a": 1.0, "b": None, "c": 1.0}  # only a has a value: it is the best
    st_["c"] = stats(ttft=100, last=NOW - 5)
    result = run(eps=ABC, st_=st_, sort=Sort.TTFT, config=promise)
    weights = {e.endpoint.provider.name: e.exploration_weight for e in result.ranked}
    assert weights == {"a": 0.1, "b": None, "c": 1.0}  # (100/2000)^2 = 0.0025 -> floor


def test_exploration_promise_is_throughput_under_sort_tps() -> None:
    st_ = {
        "a": stats(ttft=100, tps=50, last=NOW - 5),
        "b": stats(ttft=100, tps=300),  # leads: not explorable
        "c": stats(ttft=100, tps=200, last=NOW - 5),
    }
    result = run(
        eps=ABC, st_=st_, sort=Sort.TPS, config=RankingConfig(exploration_promise_exponent=2)
    )
    weights = {e.endpoint.provider.name: e.exploration_weight for e in result.ranked}
    assert weights == {"a": pytest.approx(0.1), "b": None, "c": 1.0}  # (50/200)^2 -> floor 0.1
    assert all(e.exploration_weight is None for e in run(eps=ABC, st_=st_, sort=Sort.TPS).ranked)
    loose = RankingConfig(exploration_min_weight=0.01, exploration_promise_exponent=2)
    result = run(eps=ABC, st_=st_, sort=Sort.TPS, config=loose)
    weights = {e.endpoint.provider.name: e.exploration_weight for e in result.ranked}
    assert weights["a"] == pytest.approx(0.0625)


@pytest.mark.parametrize(
    "bad", [{"exploration_promise_exponent": -1.0}, {"exploration_min_weight": 0.0}]
)
def test_exploration_promise_config_is_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        RankingConfig(**bad)  # type: ignore[arg-type]


def test_an_endpoint_silent_for_two_seconds_is_stale_by_default_one_second_is_not() -> None:
    def explorable(age: float) -> bool:
        st_ = dict(ABC_STATS, a=stats(ttft=300, last=NOW - age))
        result = run(eps=ABC, st_=st_, sort=Sort.TTFT)
        return next(e.explorable for e in result.ranked if e.endpoint.provider.name == "a")

    assert explorable(2.0) and not explorable(1.0)


def test_the_answer_of_an_endpoint_ranking_calls_stale_replaces_its_estimate() -> None:
    """Staleness (ranking) and replacement (recent estimate) agree by default: the
    exploration of a stale endpoint is taken as it is, so one probe of a recovered
    provider promotes it even when the previous (slow) probe was only seconds before."""
    stale_after = RankingConfig().stale_after_s
    tr = RecentTracker()
    for i in range(40):  # 2 s of a 6x slowdown at 20 rps
        tr.record(i * 0.05, False, 480.0)
    tr.record(1.95 + stale_after + 0.01, False, 80.0)  # just stale: the recovery's first probe
    assert tr.estimate().ttft_ms == pytest.approx(80.0)
