"""A hedge's cancelled loser is evidence about TTFT, and no verdict on health.

Told without sockets on an injected clock. Found in bench/bench_routing.py
(bench/README.md section 9): with hedging on, the sidecar's first attempts to
the leader that had slowed lost their races to the backup, were cancelled,
and were not reported at all. The router kept the leader's recent estimate
inside the near-best band, so after the sidecar's local slow mark ended (and
in every other sidecar all along) requests went on to it, each rescued by a
hedge while the budget lasted. A loser waited its endpoint's p95 plus the
whole TTFT of the backup that beat it without a first token: the same lower
bound a first-token timeout gives, without the failure.
"""

from __future__ import annotations

from router_common.domain import EndpointKey, Sort
from router_common.pb import router_pb2
from router_service.core import RouterCore
from router_service.health import HealthState
from router_service.ranking import RoutingRequest
from tests.router.pb_builders import timeout
from tests.router.test_core_recency import MODEL, ok
from tests.router.test_core_timeout_evidence import FAST, PEER, _slowed_then_silent

#: The hedge fired at the leader's p95 (~100 ms) and the backup answered 120 ms later.
LOSER_WAITED_MS = 100.0 + PEER
CANCELLED = router_pb2.ERROR_CLASS_CANCELLED


def _lost_twice() -> tuple[RouterCore, str, str]:
    """The timeout story's slowdown, told with two hedge losers instead of timeouts."""
    _, _, fast, _ = _slowed_then_silent([])  # which provider leads (the seed decides)
    losers = [timeout(fast, LOSER_WAITED_MS, started_at=0.0, error_class=CANCELLED)] * 2
    core, _, fast_again, peer = _slowed_then_silent(losers)
    assert fast_again == fast
    return core, fast, peer


def _key(core: RouterCore, provider: str) -> EndpointKey:
    return next(
        e.endpoint.key
        for e in core.rank(RoutingRequest(model=MODEL)).ranked
        if e.endpoint.provider.name == provider
    )


def test_a_leader_that_lost_two_hedges_is_out_of_the_near_best_band() -> None:
    core, fast, peer = _lost_twice()
    request = RoutingRequest(model=MODEL, sort=Sort.TTFT)
    by_name = {e.endpoint.provider.name: e for e in core.rank(request).ranked}
    assert by_name[fast].ttft_ms is not None and by_name[fast].ttft_ms > 1.3 * PEER, by_name[fast]
    assert by_name[fast].weight is None  # not drawn with the leader
    assert {core.rank(request).ranked[0].endpoint.provider.name for _ in range(50)} == {peer}


def test_without_the_losers_the_slowed_leader_would_still_lead() -> None:
    """The premise: the ranking had nothing else to go on (the test above is the change)."""
    core, _, fast, _ = _slowed_then_silent([])
    result = core.rank(RoutingRequest(model=MODEL, sort=Sort.TTFT))
    assert result.ranked[0].endpoint.provider.name == fast


def test_a_cancelled_attempt_is_neither_a_success_nor_a_failure() -> None:
    core, fast, _ = _lost_twice()
    baseline, _, _, _ = _slowed_then_silent([])
    key = _key(core, fast)
    stats, before = core.store.stats(key), baseline.store.stats(_key(baseline, fast))
    assert stats.uptime_15m == before.uptime_15m  # not an attempt: uptime as without them
    assert stats.recent.failure_ratio == before.recent.failure_ratio
    assert core.health.view(key).state is HealthState.HEALTHY
    assert core.outcomes_by_class["cancelled"] == 2


def test_a_cancelled_attempt_with_a_ttft_is_a_sample_not_a_wait() -> None:
    """Two attempts that both had a first token in the same instant: the one dropped is
    cancelled, but its TTFT was measured and is taken as an answer."""
    core, clock, fast, _ = _slowed_then_silent([])
    key = _key(core, fast)
    dropped = ok(fast, clock.now, FAST)
    dropped.success, dropped.error_class, dropped.http_status = False, CANCELLED, 0
    result = core.record([dropped])
    assert result.accepted == 1
    core.refresh()
    assert core.store.stats(key).recent.ttft_at == clock.now
