"""Health state machine: outcome sequences against a fake clock, plus a property test."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router_common.domain import EndpointKey, ErrorClass
from router_service.health import HealthConfig, HealthTracker, Transition
from router_service.model import HealthState, Outcome
from tests.conftest import FakeClock

KEY = EndpointKey("zai/glm-4.7", "cerebras")
OTHER = EndpointKey("zai/glm-4.7", "groq")

H, D, E, P = (
    HealthState.HEALTHY,
    HealthState.DEGRADED,
    HealthState.EJECTED,
    HealthState.PROBING,
)


def ok(ttft: float | None = 100.0, key: EndpointKey = KEY) -> Outcome:
    return Outcome(endpoint=key, timestamp=0.0, success=True, http_status=200, ttft_ms=ttft)


def fail(
    cls: ErrorClass = ErrorClass.SERVER_ERROR,
    status: int = 503,
    retry_after: float | None = None,
    key: EndpointKey = KEY,
) -> Outcome:
    return Outcome(
        endpoint=key,
        timestamp=0.0,
        success=False,
        error_class=cls,
        http_status=status,
        retry_after_s=retry_after,
    )


def client_err() -> Outcome:
    return fail(ErrorClass.CLIENT_ERROR, 400)


def make(
    jitter: float = 0.0, seed: int = 0, **overrides: object
) -> tuple[HealthTracker, FakeClock]:
    cfg = HealthConfig(ejection_jitter=jitter, **overrides)  # type: ignore[arg-type]
    clock = FakeClock(1_000_000.0)
    return HealthTracker(cfg, clock, random.Random(seed)), clock


def feed(tracker: HealthTracker, outcomes: list[Outcome], baseline: float | None = None) -> None:
    for o in outcomes:
        tracker.record(o, baseline)


# ----------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("outcomes", "expected", "reason_part"),
    [
        ([fail()] * 4, H, ""),
        ([fail()] * 5, E, "5 consecutive failures (last: server_error 503)"),
        ([fail(ErrorClass.TIMEOUT, 0)] * 5, E, "(last: timeout)"),
        ([fail(ErrorClass.CONNECT, 0)] * 5, E, "(last: connect)"),
        ([fail(ErrorClass.AUTH, 401)] * 5, E, "(last: auth 401)"),
        ([fail(ErrorClass.STREAM_ABORT, 200)] * 5, E, "(last: stream_abort 200)"),
        ([fail(ErrorClass.RATE_LIMITED, 429)] * 5, E, "(last: rate_limited 429)"),
        ([fail()] * 4 + [ok()] + [fail()] * 4, H, ""),  # a success resets the streak
        # Client errors are neither failure nor success: they don't count, nor reset.
        ([fail()] * 4 + [client_err()] * 20, H, ""),
        ([fail()] * 4 + [client_err()] + [fail()], E, "5 consecutive failures"),
        ([client_err()] * 50, H, ""),
        # Unclassified failure is a failure.
        ([Outcome(endpoint=KEY, timestamp=0, success=False)] * 5, E, "unclassified failure"),
    ],
)
def test_consecutive_failures(outcomes: list[Outcome], expected: HealthState, reason_part: str):
    tracker, _ = make(failure_rate_min_attempts=1000, failure_rate_max_samples=1000)
    feed(tracker, outcomes)
    view = tracker.view(KEY)
    assert view.state is expected
    assert reason_part in view.reason
    assert (view.ejected_until is not None) == (expected is E)


def test_consecutive_failure_view_fields():
    tracker, clock = make()
    feed(tracker, [fail()] * 5)
    v = tracker.view(KEY)
    assert v.state is E
    assert v.consecutive_failures == 5
    assert v.last_failure_at == clock.now
    assert v.since == clock.now
    assert v.ejected_until == pytest.approx(clock.now + 10.0)
    assert not v.probe_available


def alternating(n_fail: int, n_ok: int) -> list[Outcome]:
    """Interleave so consecutive failures never reach 5; ends on a failure when it can.

    Ejection decisions are taken on failures, so the rate rule gets its chance
    at the last outcome.
    """
    out: list[Outcome] = []
    fails, oks = n_fail, n_ok
    while fails or oks:
        if oks:
            out.append(ok())
            oks -= 1
        if fails:
            out.append(fail())
            fails -= 1
    return out


@pytest.mark.parametrize(
    ("n_fail", "n_ok", "expected", "reason"),
    [
        (4, 4, H, ""),  # rate 0.5 but only 8 attempts: neither rule applies
        (3, 3, H, ""),
        (5, 5, E, "failure rate 0.50 over 10 attempts in 30s; ejected"),
        (6, 5, E, "failure rate 0.50 over 10 attempts in 30s; ejected"),
        (4, 6, D, "failure rate 0.40 over 10 attempts in 30s"),  # elevated, sub-ejection
        (2, 8, D, "failure rate 0.20 over 10 attempts in 30s"),  # inclusive threshold
        (1, 9, H, ""),
        (4, 16, D, "failure rate 0.20 over 20 attempts in 30s"),
        (13, 12, E, "failure rate 0.50 over 10 attempts in 30s; ejected"),
    ],
)
def test_failure_rate_requires_min_attempts(
    n_fail: int, n_ok: int, expected: HealthState, reason: str
):
    tracker, _ = make()
    feed(tracker, alternating(n_fail, n_ok))
    v = tracker.view(KEY)
    assert v.state is expected, v.reason
    assert v.reason.startswith(reason)


def test_failure_rate_eject_reason_numbers():
    tracker, _ = make(failure_rate_min_attempts=13)
    # 8 failures in 13 attempts, never 5 in a row; the 13th is a failure.
    feed(tracker, [ok()] * 4 + [fail()] * 4 + [ok()] + [fail()] * 4)
    v = tracker.view(KEY)
    assert v.state is E
    assert v.reason.startswith("failure rate 0.62 over 13 attempts in 30s; ejected for 10s")


def test_failure_rate_window_ages_out():
    tracker, clock = make()
    for _ in range(10):
        tracker.record(fail() if _ % 2 else ok())
        clock.advance(4.0)  # 10 attempts spread over 40s: never 10 inside 30s
    assert tracker.view(KEY).state is H


def test_window_memory_is_bounded():
    tracker, _ = make(failure_rate_max_samples=50, degraded_ttft_samples=7)
    feed(tracker, [ok()] * 500)
    st_ = tracker._states[KEY]
    assert len(st_.window) == 50
    assert len(st_.ttfts) == 7


# --------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("retry_after", "expected_s"),
    [(20.0, 20.0), (0.5, 0.5), (600.0, 600.0), (3600.0, 600.0), (1e12, 600.0)],
)
def test_retry_after_ejects_exactly_until_then_capped(retry_after: float, expected_s: float):
    tracker, clock = make(jitter=0.2)  # jitter must not apply to Retry-After
    t0 = clock.now
    tracker.record(fail(ErrorClass.RATE_LIMITED, 429, retry_after=retry_after))
    v = tracker.view(KEY)
    assert v.state is E
    assert v.ejected_until == pytest.approx(t0 + expected_s)
    assert f"429 Retry-After {expected_s:g}s" in v.reason or "429 Retry-After" in v.reason
    clock.advance(expected_s - 0.01)
    assert tracker.view(KEY).state is E
    clock.advance(0.01)
    assert tracker.view(KEY).state is P


def test_retry_after_reason_text():
    tracker, _ = make()
    tracker.record(fail(ErrorClass.RATE_LIMITED, 429, retry_after=20))
    assert tracker.view(KEY).reason.startswith("429 Retry-After 20s")


@pytest.mark.parametrize("ra", [None, 0.0, -5.0, float("nan")])
def test_429_without_usable_retry_after_is_an_ordinary_failure(ra: float | None):
    tracker, _ = make()
    tracker.record(fail(ErrorClass.RATE_LIMITED, 429, retry_after=ra))
    assert tracker.view(KEY).state is H


def test_retry_after_while_ejected_extends_never_shortens():
    tracker, clock = make()
    feed(tracker, [fail()] * 5)
    until = tracker.view(KEY).ejected_until
    assert until is not None
    tracker.record(fail(ErrorClass.RATE_LIMITED, 429, retry_after=1))
    assert tracker.view(KEY).ejected_until == until
    tracker.record(fail(ErrorClass.RATE_LIMITED, 429, retry_after=120))
    assert tracker.view(KEY).ejected_until == pytest.approx(clock.now + 120)


# ---------------------------------------------------------- ejection growth


def eject_probe_fail_cycle(tracker: HealthTracker, clock: FakeClock, rounds: int) -> list[float]:
    """Eject once, then let each probe fail; return each ejection's duration."""
    durations = []
    feed(tracker, [fail()] * 5)
    for _ in range(rounds):
        v = tracker.view(KEY)
        assert v.state is E and v.ejected_until is not None
        durations.append(v.ejected_until - clock.now)
        clock.now = v.ejected_until
        assert tracker.view(KEY).state is P
        tracker.record(fail())
    return durations


def test_ejection_grows_and_caps_without_jitter():
    tracker, clock = make()
    durations = eject_probe_fail_cycle(tracker, clock, 8)
    assert durations == pytest.approx([10, 20, 40, 80, 160, 300, 300, 300])


@pytest.mark.parametrize("seed", range(20))
def test_ejection_with_jitter_stays_in_bounds_and_grows(seed: int):
    tracker, clock = make(jitter=0.2, seed=seed)
    durations = eject_probe_fail_cycle(tracker, clock, 10)
    for d in durations:
        assert 10 * 0.8 <= d <= 300 * 1.2
    assert 8.0 <= durations[0] <= 12.0
    # mult*(1-j) = 1.6 > 1+j = 1.2: strictly longer until the cap.
    for a, b in itertools.pairwise(durations[:5]):
        assert b > a
    for d in durations[6:]:
        assert 240.0 <= d <= 360.0


def test_probe_failure_re_ejects_for_longer_with_reason():
    tracker, clock = make()
    feed(tracker, [fail()] * 5)
    clock.advance(10)
    assert tracker.view(KEY).state is P
    tracker.grant_probe(KEY)
    tracker.record(fail(ErrorClass.TIMEOUT, 0))
    v = tracker.view(KEY)
    assert v.state is E
    assert v.ejected_until == pytest.approx(clock.now + 20)
    assert "probe failed (timeout)" in v.reason
    assert "ejection #2" in v.reason


def test_probe_failure_with_retry_after_takes_the_longer():
    tracker, clock = make()
    feed(tracker, [fail()] * 5)
    clock.advance(10)
    tracker.record(fail(ErrorClass.RATE_LIMITED, 429, retry_after=100))
    assert tracker.view(KEY).ejected_until == pytest.approx(clock.now + 100)


def recover(tracker: HealthTracker, clock: FakeClock) -> None:
    v = tracker.view(KEY)
    assert v.ejected_until is not None
    clock.now = v.ejected_until
    for _ in range(tracker.config.probe_successes_to_recover):
        assert tracker.view(KEY).state is P
        tracker.grant_probe(KEY)
        tracker.record(ok())
    assert tracker.view(KEY).state is H


def test_repeated_ejections_grow_and_decay_resets():
    tracker, clock = make(ejection_decay_s=600)
    lengths = []
    for gap in (1.0, 1.0, 1.0):
        feed(tracker, [fail()] * 5)
        v = tracker.view(KEY)
        assert v.ejected_until is not None
        lengths.append(v.ejected_until - clock.now)
        recover(tracker, clock)
        clock.advance(gap)
    assert lengths == pytest.approx([10, 20, 40])
    # Healthy for longer than the decay: back to base.
    clock.advance(600)
    feed(tracker, [fail()] * 5)
    v = tracker.view(KEY)
    assert v.ejected_until == pytest.approx(clock.now + 10)
    assert "ejection #1" in v.reason


def test_decay_boundary():
    tracker, clock = make(ejection_decay_s=100)
    feed(tracker, [fail()] * 5)
    recover(tracker, clock)
    clock.advance(99.9)
    feed(tracker, [fail()] * 5)
    assert tracker.view(KEY).ejected_until == pytest.approx(clock.now + 20)
    recover(tracker, clock)
    clock.advance(100)
    feed(tracker, [fail()] * 5)
    assert tracker.view(KEY).ejected_until == pytest.approx(clock.now + 10)


def test_ejection_duration_never_overflows():
    tracker, _ = make(ejection_multiplier=10.0, max_ejection_s=1e6)
    assert tracker._ejection_duration(10_000) == pytest.approx(1e6)
    tracker, _ = make(ejection_multiplier=1.0)
    assert tracker._ejection_duration(10_000) == pytest.approx(10)


# ------------------------------------------------------------------ probing


def test_ejected_to_probing_at_the_right_time():
    tracker, clock = make()
    t0 = clock.now
    feed(tracker, [fail()] * 5)
    clock.now = t0 + 9.999
    assert tracker.view(KEY).state is E
    clock.now = t0 + 10
    v = tracker.view(KEY)
    assert v.state is P
    assert v.since == t0 + 10
    assert v.ejected_until is None
    assert v.probe_available
    assert "probing (0/2" in v.reason


def test_probe_permits_limit_and_free_on_report():
    tracker, clock = make(probe_permits=2, probe_successes_to_recover=3)
    feed(tracker, [fail()] * 5)
    clock.advance(10)
    assert tracker.view(KEY).probe_available
    tracker.grant_probe(KEY)
    assert tracker.view(KEY).probe_available
    tracker.grant_probe(KEY)
    assert not tracker.view(KEY).probe_available
    tracker.grant_probe(KEY)  # over the limit: ignored
    tracker.record(ok())
    v = tracker.view(KEY)
    assert v.state is P and v.probe_available
    assert v.reason == "probe 1/3 succeeded"
    # A client error ends a probe too (permit back) but is no evidence.
    tracker.grant_probe(KEY)
    assert not tracker.view(KEY).probe_available
    tracker.record(client_err())
    v = tracker.view(KEY)
    assert v.probe_available and v.reason == "probe 1/3 succeeded"


def test_probe_successes_restore_healthy():
    tracker, clock = make()
    feed(tracker, [fail()] * 5)
    clock.advance(10)
    tracker.grant_probe(KEY)
    tracker.record(ok())
    v = tracker.view(KEY)
    assert v.state is P and v.reason == "probe 1/2 succeeded" and v.probe_available
    tracker.grant_probe(KEY)
    tracker.record(ok())
    v = tracker.view(KEY)
    assert v.state is H
    assert v.consecutive_failures == 0
    assert v.reason == "recovered: probe 2/2 succeeded"
    # Pre-ejection failures were forgotten: 4 new ones don't eject.
    feed(tracker, [fail()] * 4)
    assert tracker.view(KEY).state is H


def test_unreported_probe_frees_after_timeout():
    tracker, clock = make(probe_timeout_s=30)
    feed(tracker, [fail()] * 5)
    clock.advance(10)
    tracker.grant_probe(KEY)
    assert not tracker.view(KEY).probe_available
    clock.advance(29.9)
    assert not tracker.view(KEY).probe_available
    clock.advance(0.1)
    v = tracker.view(KEY)
    assert v.state is P and v.probe_available


def test_grant_probe_outside_probing_is_a_noop():
    tracker, clock = make()
    tracker.grant_probe(KEY)  # unknown key
    assert tracker.view(KEY).state is H
    tracker.record(ok())
    tracker.grant_probe(KEY)  # healthy
    feed(tracker, [fail()] * 5)
    tracker.grant_probe(KEY)  # ejected
    clock.advance(10)
    assert tracker.view(KEY).probe_available


def test_outcomes_while_ejected_do_not_move_the_timer():
    tracker, _ = make()
    feed(tracker, [fail()] * 5)
    until = tracker.view(KEY).ejected_until
    feed(tracker, [ok()] * 10 + [fail()] * 10)
    v = tracker.view(KEY)
    assert v.state is E and v.ejected_until == until
    assert v.consecutive_failures == 10


# ----------------------------------------------------------------- degraded


def test_degraded_on_ttft_with_min_samples_and_recovery():
    tracker, _ = make(degraded_ttft_ratio=3.0)
    feed(tracker, [ok(ttft=2400)] * 4, baseline=580)
    assert tracker.view(KEY).state is H  # 4 < degraded_min_samples
    tracker.record(ok(ttft=2400), 580)
    v = tracker.view(KEY)
    assert v.state is D
    assert v.reason == "TTFT p50 2400ms is 4.1\u00d7 baseline 580ms"
    # Fast again: 5 slow / 5 fast, median 1450ms < 3 x 580ms.
    feed(tracker, [ok(ttft=500)] * 5, baseline=580)
    assert tracker.view(KEY).state is H


def test_degraded_ttft_recovery_sequence():
    tracker, _ = make(degraded_ttft_ratio=3.0)
    feed(tracker, [ok(ttft=2400)] * 10, baseline=580)
    assert tracker.view(KEY).state is D
    feed(tracker, [ok(ttft=500)] * 9, baseline=580)
    assert tracker.view(KEY).state is D  # median still 2400 (10 slow, 9 fast)
    tracker.record(ok(ttft=500), 580)  # 10/10: median 1450 < 3 x 580
    v = tracker.view(KEY)
    assert v.state is H
    assert v.reason.startswith("recovered: was TTFT p50")


@pytest.mark.parametrize(
    ("ttft", "baseline", "expected"),
    [
        (1160, 580, H),  # exactly the default 2x: not "above"
        (1161, 580, D),
        (10_000, None, H),  # unknown baseline: no TTFT rule
        (10_000, 0.0, H),  # nonsense baseline ignored
    ],
)
def test_ttft_ratio_threshold(ttft: float, baseline: float | None, expected: HealthState):
    tracker, _ = make()
    feed(tracker, [ok(ttft=ttft)] * 5, baseline=baseline)
    assert tracker.view(KEY).state is expected


def test_last_known_baseline_is_kept():
    tracker, _ = make()
    tracker.record(ok(ttft=100), 580)
    feed(tracker, [ok(ttft=5000)] * 5)  # later calls without a baseline
    assert tracker.view(KEY).state is D


def test_ttft_samples_age_out_so_degraded_clears_without_traffic():
    tracker, clock = make(degraded_ttft_max_age_s=300)
    feed(tracker, [ok(ttft=5000)] * 5, baseline=500)
    assert tracker.view(KEY).state is D
    clock.advance(300.1)
    v = tracker.view(KEY)
    assert v.state is H
    assert v.since == clock.now


def test_successes_without_ttft_do_not_count_as_samples():
    tracker, _ = make()
    feed(tracker, [ok(ttft=None)] * 10 + [ok(ttft=5000)] * 4, baseline=500)
    assert tracker.view(KEY).state is H


def test_degraded_on_elevated_failure_rate_and_recovery():
    tracker, clock = make()
    feed(tracker, alternating(3, 7))
    v = tracker.view(KEY)
    assert v.state is D
    assert v.reason == "failure rate 0.30 over 10 attempts in 30s"
    feed(tracker, [ok()] * 5)  # 3/15 = 0.2: still degraded (inclusive)
    assert tracker.view(KEY).state is D
    tracker.record(ok())  # 3/16 < 0.2
    assert tracker.view(KEY).state is H
    # And the window ageing out alone also clears it.
    tracker2, clock2 = make()
    feed(tracker2, alternating(3, 7))
    assert tracker2.view(KEY).state is D
    clock2.advance(30.1)
    assert tracker2.view(KEY).state is H
    del clock


def test_degraded_to_ejected():
    tracker, _ = make()
    feed(tracker, alternating(3, 7))
    assert tracker.view(KEY).state is D
    feed(tracker, [fail()] * 5)
    assert tracker.view(KEY).state is E


def test_both_degraded_reasons_are_reported():
    tracker, _ = make()
    feed(tracker, alternating(3, 7)[:-5] + [ok(ttft=3000)] * 5, baseline=500)
    v = tracker.view(KEY)
    assert v.state is D
    assert "failure rate" in v.reason and "TTFT p50" in v.reason


# ------------------------------------------------------ bookkeeping and api


def test_unknown_key_is_healthy_and_views():
    tracker, _ = make()
    feed(tracker, [fail()] * 5)
    views = tracker.views([KEY, OTHER])
    assert views[KEY].state is E
    assert views[OTHER].state is H
    assert tracker.known() == [KEY]


def test_endpoints_are_independent():
    tracker, _ = make()
    feed(tracker, [fail(key=OTHER)] * 5 + [fail()] * 4)
    assert tracker.view(OTHER).state is E
    assert tracker.view(KEY).state is H


def test_retain_drops_state():
    tracker, _ = make()
    feed(tracker, [fail()] * 5 + [fail(key=OTHER)] * 5)
    tracker.retain([OTHER])
    assert tracker.known() == [OTHER]
    assert tracker.view(KEY).state is H
    assert tracker.view(OTHER).state is E
    tracker.retain(set())
    assert tracker.known() == []


def test_transitions_log_and_listener():
    seen: list[Transition] = []
    cfg = HealthConfig(ejection_jitter=0.0, transition_log_size=3)
    clock = FakeClock(1_000_000.0)
    tracker = HealthTracker(cfg, clock, random.Random(0), on_transition=seen.append)
    feed(tracker, [fail()] * 5)
    clock.advance(10)
    tracker.view(KEY)
    feed(tracker, [ok()] * 2)
    assert [(t.from_state, t.to_state) for t in seen] == [(H, E), (E, P), (P, H)]
    assert seen[0].at == clock.now - 10 and seen[0].key == KEY
    feed(tracker, [fail(key=OTHER)] * 5)
    log = tracker.transitions()
    assert len(log) == 3  # bounded
    assert [t.to_state for t in log] == [P, H, E]
    assert [t.to_state for t in tracker.transitions(KEY)] == [P, H]
    assert [t.to_state for t in tracker.transitions(limit=1)] == [E]
    assert tracker.transitions(limit=0) == []


# ------------------------------------------------------------------- config


def test_defaults_are_valid_and_documented():
    cfg = HealthConfig()
    doc = HealthConfig.__doc__ or ""
    for f in dataclasses.fields(cfg):
        assert f.name in doc, f"{f.name} missing from the HealthConfig docstring"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("consecutive_failures_to_eject", 0),
        ("consecutive_failures_to_eject", 2.5),
        ("consecutive_failures_to_eject", True),
        ("failure_rate_window_s", 0.0),
        ("failure_rate_window_s", float("nan")),
        ("failure_rate_to_eject", 0.0),
        ("failure_rate_to_eject", 1.5),
        ("failure_rate_min_attempts", 0),
        ("failure_rate_max_samples", 5),  # < failure_rate_min_attempts
        ("degraded_failure_rate", 0.6),  # > failure_rate_to_eject
        ("degraded_ttft_ratio", 1.0),
        ("degraded_min_samples", 50),  # > degraded_ttft_samples
        ("degraded_ttft_max_age_s", -1.0),
        ("base_ejection_s", 0.0),
        ("max_ejection_s", 5.0),  # < base
        ("ejection_multiplier", 0.5),
        ("ejection_jitter", 1.0),
        ("ejection_jitter", -0.1),
        ("max_retry_after_s", float("inf")),
        ("max_retry_after_s", 0),
        ("probe_permits", 0),
        ("probe_successes_to_recover", 0),
        ("probe_timeout_s", 0.0),
        ("ejection_decay_s", -1.0),
        ("transition_log_size", 0),
        ("base_ejection_s", "10"),
    ],
)
def test_config_validation_names_the_field(field: str, value: object):
    with pytest.raises(
        ValueError, match=rf"HealthConfig\.\w+ .*\b{field}\b|HealthConfig\.{field}\b"
    ):
        HealthConfig(**{field: value})  # type: ignore[arg-type]


def test_config_accepts_int_for_float_fields():
    assert HealthConfig(base_ejection_s=5, ejection_decay_s=0).base_ejection_s == 5


# ----------------------------------------------------------------- property

outcome_st = st.one_of(
    st.builds(
        lambda t: ok(ttft=t), st.one_of(st.none(), st.floats(0, 20_000), st.just(float("nan")))
    ),
    st.builds(
        lambda cls, status, ra: fail(cls, status, ra),
        st.sampled_from(list(ErrorClass)),
        st.sampled_from([0, 400, 401, 429, 500, 503]),
        st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    ),
    st.builds(lambda: Outcome(endpoint=OTHER, timestamp=0, success=False, http_status=500)),
)
step_st = st.one_of(
    st.tuples(st.just("record"), outcome_st, st.one_of(st.none(), st.floats(-10, 5000))),
    st.tuples(st.just("advance"), st.floats(0, 1000), st.none()),
    st.tuples(st.just("grant"), st.sampled_from([KEY, OTHER]), st.none()),
    st.tuples(st.just("retain"), st.booleans(), st.none()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(step_st, max_size=80),
    jitter=st.sampled_from([0.0, 0.2, 0.5]),
    permits=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_property_state_is_always_consistent(
    steps: list[tuple[str, object, object]], jitter: float, permits: int, seed: int
):
    cfg = HealthConfig(ejection_jitter=jitter, probe_permits=permits)
    clock = FakeClock(1_000_000.0)
    tracker = HealthTracker(cfg, clock, random.Random(seed))
    for op, arg, extra in steps:
        if op == "record":
            assert isinstance(arg, Outcome)
            tracker.record(arg, extra)  # type: ignore[arg-type]
        elif op == "advance":
            clock.advance(arg)  # type: ignore[arg-type]
        elif op == "grant":
            tracker.grant_probe(arg)  # type: ignore[arg-type]
        else:
            tracker.retain([KEY] if arg else [])
        for key, v in tracker.views([KEY, OTHER]).items():
            assert v.state in set(HealthState)
            assert (v.ejected_until is not None) == (v.state is E)
            if v.state is E:
                assert v.ejected_until is not None
                assert v.ejected_until > clock.now
                assert v.ejected_until - clock.now <= max(
                    cfg.max_ejection_s * (1 + jitter), cfg.max_retry_after_s
                )
            assert not v.probe_available or v.state is P
            assert v.consecutive_failures >= 0
            assert v.since <= clock.now
            assert isinstance(v.reason, str)
            state = tracker._states.get(key)
            if state is not None:
                assert len(state.probe_grants) <= permits
                assert len(state.window) <= cfg.failure_rate_max_samples
                assert len(state.ttfts) <= cfg.degraded_ttft_samples


# ------------------------------------------------- degraded: defaults and peers

PEER = EndpointKey(KEY.model, "peer-b")
OTHER = EndpointKey(KEY.model, "peer-c")


def _steady(tracker: HealthTracker, key: EndpointKey, ttft: float, baseline: float, n: int = 20):
    for _ in range(n):
        tracker.record(ok(ttft=ttft, key=key), baseline)


def test_default_catches_a_3x_slowdown_measured_with_fixed_overhead():
    """80 ms provider + 10 ms proxy/connection: x3 reads as 250/90 = 2.8x, under 3."""
    tracker, _ = make()
    overhead, ttft = 10.0, 80.0
    baseline = ttft + overhead
    _steady(tracker, KEY, baseline, baseline)
    _steady(tracker, PEER, 120 + overhead, 120 + overhead)
    slow = 3 * ttft + overhead
    for _ in range(10):
        tracker.record(ok(ttft=slow), baseline)
    assert tracker.view(KEY).state is H  # 10 slow of 20: the median is not there yet
    tracker.record(ok(ttft=slow), baseline)
    v = tracker.view(KEY)
    assert v.state is D
    assert "2.8\u00d7 baseline 90ms" in v.reason


def test_a_model_wide_slowdown_degrades_no_endpoint():
    tracker, _ = make()
    for key in (KEY, PEER, OTHER):
        _steady(tracker, key, 100, 100)
    for key in (PEER, OTHER, KEY):  # everyone 2.5x slower (longer prompts, say)
        _steady(tracker, key, 250, 100)
    assert {tracker.view(k).state for k in (KEY, PEER, OTHER)} == {H}


def test_an_endpoint_slower_than_its_peers_slowdown_is_degraded_with_both_numbers():
    tracker, _ = make()
    _steady(tracker, PEER, 150, 100)  # peers 1.5x slower
    _steady(tracker, OTHER, 150, 100)
    _steady(tracker, KEY, 290, 100)  # 2.9x: not 2x beyond the peers' 1.5x
    assert tracker.view(KEY).state is H
    _steady(tracker, KEY, 310, 100)  # 3.1x > 2 x 1.5
    v = tracker.view(KEY)
    assert v.state is D
    assert v.reason == "TTFT p50 310ms is 3.1\u00d7 baseline 100ms (peers 1.5\u00d7)"


def test_stale_peer_evidence_excuses_nothing():
    tracker, clock = make()
    _steady(tracker, PEER, 300, 100)  # a peer 3x slower, long ago
    clock.advance(31)
    _steady(tracker, KEY, 250, 100)
    assert tracker.view(KEY).state is D


def test_peers_of_another_model_do_not_count():
    tracker, _ = make()
    _steady(tracker, EndpointKey("other/model", "peer-b"), 300, 100)
    _steady(tracker, KEY, 250, 100)
    assert tracker.view(KEY).state is D


def test_retain_forgets_peers():
    tracker, _ = make()
    _steady(tracker, PEER, 300, 100)
    tracker.retain([KEY])
    _steady(tracker, KEY, 250, 100)
    assert tracker.view(KEY).state is D
    assert tracker._by_model == {KEY.model: {KEY}}


def test_a_slowdown_does_not_raise_its_own_baseline_while_degraded():
    """The caller's hourly P50 catches up with the incident; the verdict must not."""
    tracker, clock = make()
    _steady(tracker, KEY, 300, 100)
    assert tracker.view(KEY).state is D
    tracker.record(ok(ttft=300), 300)  # the hour is now mostly the incident
    assert tracker.view(KEY).state is D
    tracker.record(ok(ttft=300), 90)  # a lower baseline is always taken
    assert "baseline 90ms" in tracker.view(KEY).reason
    since = tracker.view(KEY).since
    while clock.now + 20 - since < 600:  # still slow, with fresh samples: still degraded
        clock.advance(20)
        _steady(tracker, KEY, 300, 300, n=5)
        assert tracker.view(KEY).state is D
    clock.advance(20)  # slow for longer than the freeze: the new normal
    _steady(tracker, KEY, 300, 300, n=5)
    assert tracker.view(KEY).state is H


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.floats(min_value=0, max_value=1e6, allow_nan=False)),
        max_size=80,
    ),
    st.integers(min_value=1, max_value=25),
)
def test_ttft_samples_median_is_statistics_median_of_what_is_kept(
    steps: list[tuple[bool, float]], keep: int
) -> None:
    """The sorted copy behind the degraded rule's O(1) median stays the queue's values
    through appends, the ``keep`` bound and age-based drops."""
    import statistics

    from router_service.health import _TtftSamples

    samples, at = _TtftSamples(), 0.0
    for drop, value in steps:
        at += 1.0
        if drop:
            samples.drop_before(at - 3.0)
        else:
            samples.append(at, value, keep)
        kept = [v for _, v in samples]
        assert len(samples) == len(kept) <= keep
        if kept:
            assert samples.median() == statistics.median(kept)
