"""A provider that recovered is not degraded by its own first fast answers.

Told without sockets on an injected clock. Found tracing bench/bench_routing.py
(bench/README.md section 9, 16f): after a slowdown the recovered provider's first
fast answers were its fourth and fifth TTFT samples in health's 30 s window, the
other three its slow answers from the incident, so the batch carrying the second
fast one moved it to DEGRADED on a median of 480 ms, after the ranking had
already seen its 80 ms estimate; it sat in the degraded tier, behind endpoints
never measured, until its next exploration seconds later.
"""

from __future__ import annotations

import random

from router_common.catalog import load_catalog
from router_common.domain import EndpointKey, Sort
from router_service.core import RouterCore
from router_service.model import HealthState
from router_service.ranking import RankingConfig, RoutingRequest
from tests.conftest import EXAMPLE_CATALOG, FakeClock
from tests.router.test_core_recency import MODEL, ok

FAST, PEER, SLOW = 80.0, 120.0, 480.0


def _after_a_slowdown() -> tuple[RouterCore, FakeClock, EndpointKey, str, str]:
    """A minute of normal traffic, then three 6x answers from the fastest provider (its
    normal samples aged out of the window meanwhile) while its peer took the traffic."""
    clock = FakeClock()
    no_exploration = RankingConfig(exploration_share=0, exploration_share_unknown=0)
    core = RouterCore(
        load_catalog(EXAMPLE_CATALOG), "v1", clock, random.Random(7), ranking_config=no_exploration
    )
    ranked = core.rank(RoutingRequest(model=MODEL)).ranked
    fast, peer = ranked[0].endpoint.provider.name, ranked[1].endpoint.provider.name
    key = ranked[0].endpoint.key
    for _ in range(600):
        core.record([ok(fast, clock.now, FAST), ok(peer, clock.now, PEER)])
        clock.now += 0.1
    core.refresh()
    for i in range(110):
        batch = [ok(peer, clock.now, PEER)]
        if i >= 80 and i % 5 == 0 and i < 95:
            batch.append(ok(fast, clock.now, SLOW))
        core.record(batch)
        clock.now += 0.4
    core.refresh()
    assert core.health_view(key).state is HealthState.HEALTHY  # 3 samples: too few to judge
    return core, clock, key, fast, peer


def test_a_recovered_providers_fast_answers_do_not_degrade_it() -> None:
    core, clock, key, fast, peer = _after_a_slowdown()
    clock.now += 2.0
    core.record([ok(fast, clock.now, FAST - 2)])  # recovered: its exploration answers fast
    core.refresh()
    clock.now += 0.5
    core.record([ok(fast, clock.now, FAST + 2), ok(peer, clock.now, PEER)])  # 5th sample
    core.refresh()
    assert core.health_view(key).state is HealthState.HEALTHY
    order = core.rank(RoutingRequest(model=MODEL, sort=Sort.TTFT)).ranked
    assert order[0].endpoint.provider.name == fast  # promoted on its recent 80 ms


def test_a_slow_answer_after_them_still_degrades_it() -> None:
    """The rule spares only answers that contradict a slowdown, not the slowdown."""
    core, clock, key, fast, _ = _after_a_slowdown()
    clock.now += 2.0
    core.record([ok(fast, clock.now, FAST)])
    clock.now += 0.5
    core.record([ok(fast, clock.now, FAST)])
    clock.now += 0.5
    core.record([ok(fast, clock.now, SLOW)])  # median of 480, 480, 480, 80, 80, 480
    assert core.health_view(key).state is HealthState.DEGRADED
