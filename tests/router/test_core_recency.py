"""Ranking follows change within seconds: cold start, slowdown, recovery, near-equal spread.

A pure simulation on an injected clock: a RouterCore, 20 requests per simulated
second, each sent to the first ranked endpoint, its outcome recorded at once.
Nothing sleeps; "within 10 s" is simulated time, so the assertions are about
the ranking's logic, not this machine's speed.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from router_common.catalog import load_catalog
from router_common.domain import Sort
from router_common.pb import router_pb2
from router_service.core import RouterCore
from router_service.ranking import RankingConfig, RoutingRequest
from tests.conftest import EXAMPLE_CATALOG, FakeClock

MODEL = "zai/glm-4.7"  # cerebras, together, fireworks, deepinfra, baseten
TICK = 0.05  # 20 rps

Ttft = Callable[[str, float], float]


def ok(provider: str, at: float, ttft: float) -> router_pb2.Outcome:
    return router_pb2.Outcome(
        model=MODEL,
        provider=provider,
        started_at=at,
        success=True,
        http_status=200,
        ttft_ms=ttft,
        tokens_per_second=90.0,
        output_tokens=20,
        duration_ms=ttft + 200,
    )


def quiet_core(clock: FakeClock, seed: int) -> RouterCore:
    """A core on ``clock`` that never explores: the story's traffic is all there is."""
    return RouterCore(
        load_catalog(EXAMPLE_CATALOG),
        "v1",
        clock,
        random.Random(seed),
        ranking_config=RankingConfig(exploration_share=0, exploration_share_unknown=0),
    )


class Sim:
    def __init__(self, seed: int = 1, sort: Sort | None = Sort.TTFT) -> None:
        self.clock = FakeClock()
        self.t0 = self.clock.now
        self.core = RouterCore(load_catalog(EXAMPLE_CATALOG), "v1", self.clock, random.Random(seed))
        self.request = RoutingRequest(model=MODEL, sort=sort)
        self.noise = random.Random(seed + 1)

    def run(self, seconds: float, ttft: Ttft) -> list[str]:
        """Serve ``seconds`` of traffic; the providers that got each request, in order."""
        firsts = []
        for _ in range(round(seconds / TICK)):
            result = self.core.rank(self.request)
            name = result.ranked[0].endpoint.provider.name
            firsts.append(name)
            t = self.clock.now - self.t0
            value = ttft(name, t) * self.noise.uniform(0.9, 1.1)
            self.core.record([ok(name, self.clock.now, value)])
            self.core.refresh()
            self.clock.advance(TICK)
        return firsts


BASE = {"cerebras": 100.0, "together": 400.0, "fireworks": 300.0, "deepinfra": 500.0}
BASE["baseten"] = 600.0


def share(firsts: list[str], name: str) -> float:
    return Counter(firsts)[name] / len(firsts)


def test_cold_start_finds_the_fastest_within_seconds() -> None:
    for seed in range(5):  # a fresh router each time: never locked in on a random first pick
        sim = Sim(seed)
        sim.run(5.0, lambda n, t: BASE[n])
        after = sim.run(10.0, lambda n, t: BASE[n])
        assert share(after, "cerebras") > 0.8, (seed, Counter(after))


def test_slowdown_is_demoted_and_recovery_promoted_within_10s() -> None:
    sim = Sim(3)
    sim.run(20.0, lambda n, t: BASE[n])
    slow_start = sim.clock.now - sim.t0

    def slowed(n: str, t: float) -> float:
        return 1500.0 if n == "cerebras" else BASE[n]

    sim.run(10.0, slowed)  # demotion window
    later = sim.run(10.0, slowed)
    assert share(later, "cerebras") < 0.1, Counter(later)
    assert share(later, "fireworks") > 0.7, Counter(later)
    assert slow_start > 0
    sim.run(10.0, lambda n, t: BASE[n])  # promotion window
    recovered = sim.run(10.0, lambda n, t: BASE[n])
    assert share(recovered, "cerebras") > 0.8, Counter(recovered)


def test_near_equal_endpoints_share_traffic_instead_of_herding() -> None:
    sim = Sim(5)

    def equalish(n: str, t: float) -> float:
        return {"cerebras": 200.0, "together": 204.0, "fireworks": 208.0}.get(n, 900.0)

    sim.run(10.0, equalish)
    steady = sim.run(20.0, equalish)
    counts = Counter(steady)
    # Each of the three near-equal ones serves a real share; none takes over.
    for name in ("cerebras", "together", "fireworks"):
        assert 0.15 < counts[name] / len(steady) < 0.6, counts
    # And the order does not flip-flop per request on one of them only.
    assert max(counts.values()) / len(steady) < 0.6
