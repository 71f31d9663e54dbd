"""A first-token timeout is evidence about TTFT, not only a failure.

Told without sockets on an injected clock. Found tracing bench/bench_routing.py
(bench/README.md section 9): the fastest provider slowed 6x; of the three
requests the sidecar sent it before backing off, one answered slowly and two
timed out at 500 ms. Counted as failures only, the timeouts left its recent
estimate where one slow answer in a burst had put it (143 ms against its
peer's 120 ms), inside the near-best band, and ten seconds later, when the
sidecar's local cooldown ended, the ranking still gave it a share of the
traffic on that estimate.
"""

from __future__ import annotations

from router_common.domain import Sort
from router_common.pb import router_pb2
from router_service.core import RouterCore
from router_service.ranking import RoutingRequest
from tests.conftest import FakeClock
from tests.router.pb_builders import timeout
from tests.router.test_core_recency import MODEL, ok, quiet_core

FAST, PEER, SLOW, TIMEOUT_MS = 80.0, 120.0, 480.0, 500.0


def _slowed_then_silent(
    batch_of_slowdown: list[router_pb2.Outcome] | None = None,
) -> tuple[RouterCore, FakeClock, str, str]:
    clock = FakeClock()
    core = quiet_core(clock, 3)
    ranked = core.rank(RoutingRequest(model=MODEL)).ranked
    fast, peer = ranked[0].endpoint.provider.name, ranked[1].endpoint.provider.name
    for _ in range(200):  # 10 s: both answer at their usual speed
        core.record([ok(fast, clock.now, FAST), ok(peer, clock.now, PEER)])
        clock.now += 0.05
    core.refresh()
    # The slowdown: one slow answer and two first-token timeouts, in one flush.
    core.record(
        batch_of_slowdown
        if batch_of_slowdown is not None
        else [
            ok(fast, clock.now, SLOW),
            timeout(fast, TIMEOUT_MS, started_at=clock.now),
            timeout(fast, TIMEOUT_MS, started_at=clock.now),
        ]
    )
    for _ in range(200):  # 10 s: the sidecar backs off it locally; its peer takes everything
        clock.now += 0.05
        core.record([ok(peer, clock.now, PEER)])
    core.refresh()
    return core, clock, fast, peer


def test_a_provider_whose_attempts_timed_out_is_out_of_the_near_best_band() -> None:
    core, _, fast, peer = _slowed_then_silent()
    request = RoutingRequest(model=MODEL, sort=Sort.TTFT)
    result = core.rank(request)
    by_name = {e.endpoint.provider.name: e for e in result.ranked}
    assert by_name[fast].ttft_ms is not None and by_name[fast].ttft_ms > 2 * PEER, by_name[fast]
    assert by_name[fast].weight is None  # not drawn with the leader
    firsts = {core.rank(request).ranked[0].endpoint.provider.name for _ in range(50)}
    assert firsts == {peer}


def test_the_timeouts_are_not_answers() -> None:
    """The wait raises the estimate, but the endpoint still counts as silent since its last
    answer: it goes stale and is explored, and its next answer replaces the estimate."""
    core, clock, fast, _ = _slowed_then_silent()
    key = next(
        e.endpoint.key
        for e in core.rank(RoutingRequest(model=MODEL)).ranked
        if e.endpoint.provider.name == fast
    )
    recent = core.store.stats(key).recent
    assert recent.ttft_at is not None and clock.now - recent.ttft_at > 9.0
    core.record([ok(fast, clock.now, FAST)])  # recovered: its exploration answers fast
    core.refresh()
    result = core.rank(RoutingRequest(model=MODEL, sort=Sort.TTFT))
    assert result.ranked[0].endpoint.provider.name == fast


def test_a_wait_shorter_than_the_estimate_changes_nothing() -> None:
    """A timeout that gave up sooner than the endpoint usually answers (an app's tight
    timeout) says nothing new about its speed."""
    core, _, fast, _ = _slowed_then_silent([])
    before = core.rank(RoutingRequest(model=MODEL, sort=Sort.TTFT))
    core2, _, _, _ = _slowed_then_silent([timeout(fast, FAST / 2, started_at=0.0)])
    after = core2.rank(RoutingRequest(model=MODEL, sort=Sort.TTFT))
    ttft = {e.endpoint.provider.name: e.ttft_ms for e in before.ranked}
    assert {e.endpoint.provider.name: e.ttft_ms for e in after.ranked} == ttft
