"""One answer after a silence is enough to lead, not to share the near-best band.

Told without sockets on an injected clock. From bench/bench_routing.py's failure
phase (bench/README.md section 9, 16g and 16i): the leader answers in 160 ms, a
provider whose median is 200 ms gets no traffic but explorations, and each of its
explorations replaces its estimate (``replace_after_s``). One lucky answer of 170 ms
put it within 10% of the leader, so it took half the traffic (the band's equal
weights) until its next answers, at its real speed, moved it out again.
"""

from __future__ import annotations

from collections import Counter

from router_common.domain import Sort
from router_service.core import RouterCore
from router_service.ranking import RoutingRequest
from tests.conftest import FakeClock
from tests.router.test_core_recency import MODEL, ok, quiet_core

LEADER_MS, OTHER_MS, LUCKY_MS, RECOVERED_MS = 160.0, 200.0, 170.0, 100.0


def _leader_and_a_silent_peer() -> tuple[RouterCore, FakeClock, str, str]:
    clock = FakeClock()
    core = quiet_core(clock, 5)
    ranked = core.rank(RoutingRequest(model=MODEL)).ranked
    leader, other = ranked[0].endpoint.provider.name, ranked[1].endpoint.provider.name
    for _ in range(100):  # 5 s: both measured
        core.record([ok(leader, clock.now, LEADER_MS), ok(other, clock.now, OTHER_MS)])
        clock.now += 0.05
    for _ in range(60):  # 3 s: the leader takes the traffic, the other is silent
        core.record([ok(leader, clock.now, LEADER_MS)])
        clock.now += 0.05
    return core, clock, leader, other


def _firsts(core: RouterCore, n: int = 300) -> Counter[str]:
    request = RoutingRequest(model=MODEL, sort=Sort.TTFT)
    return Counter(core.rank(request).ranked[0].endpoint.provider.name for _ in range(n))


def test_one_lucky_answer_of_a_slower_provider_takes_no_share() -> None:
    core, clock, leader, other = _leader_and_a_silent_peer()
    core.record([ok(other, clock.now, LUCKY_MS)])  # its exploration: within 10% of the leader
    core.refresh()
    ranked = {
        e.endpoint.provider.name: e
        for e in core.rank(RoutingRequest(model=MODEL, sort=Sort.TTFT)).ranked
    }
    assert ranked[other].ttft_ms is not None and ranked[other].ttft_ms < LEADER_MS * 1.1
    assert ranked[other].weight is None
    assert _firsts(core) == {leader: 300}
    # Its next answer (traffic, or the next exploration within the window) is a second
    # opinion: then the band takes it as an ordinary estimate.
    clock.now += 0.2
    core.record([ok(other, clock.now, LUCKY_MS)])
    core.refresh()
    assert _firsts(core)[other] > 60


def test_one_answer_that_beats_the_leader_leads_at_once() -> None:
    """A recovered provider is still seen on its first answer."""
    core, clock, _, other = _leader_and_a_silent_peer()
    core.record([ok(other, clock.now, RECOVERED_MS)])
    core.refresh()
    assert _firsts(core) == {other: 300}
