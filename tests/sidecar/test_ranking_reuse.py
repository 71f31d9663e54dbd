"""A reused ranking, per request: the near-best band redrawn under sort, exploration with the
router's share (and marked), the router's suggested timeouts read within their bounds."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from router_common.pb import router_pb2
from sidecar.config import SidecarSettings
from sidecar.ranking_client import Ranking, Route
from sidecar.timeouts import first_token_timeout


def route(name: str, **kw: object) -> Route:
    return Route(name, "http://127.0.0.1:1/v1", "", False, name, **kw)  # type: ignore[arg-type]


def test_sort_ranking_near_best_band_is_redrawn_per_request() -> None:
    band = [route(n, weight=1.0) for n in "abcd"]
    slow = route("e")
    ranking = Ranking((*band, slow), "cache", {"strategy": "sort"})
    rng = random.Random(3)
    drawn = [ranking.redraw(rng) for _ in range(4000)]
    firsts = Counter(r.routes[0].provider for r in drawn)
    assert max(firsts.values()) / 4000 < 0.3  # four equal ones: about a quarter each
    assert all(r.routes[-1].provider == "e" for r in drawn)  # beyond the band: strict
    assert all(r.metadata["execution_order"][0] == r.routes[0].provider for r in drawn)


def test_exploration_share_puts_an_explorable_route_first_and_marks_it() -> None:
    routes = (route("a", weight=1.0), route("b"), route("c", explorable=True))
    ranking = Ranking(routes, "cache", {"strategy": "sort", "exploration_share": 0.1})
    rng = random.Random(9)
    drawn = [ranking.redraw(rng) for _ in range(4000)]
    explored = [r for r in drawn if r.metadata.get("exploration")]
    assert 0.07 * 4000 < len(explored) < 0.13 * 4000
    assert all(r.routes[0].provider == "c" for r in explored)
    assert all(r.metadata["exploration_provider"] == "c" for r in explored)
    assert not any(r.routes[0].provider == "c" for r in drawn if r not in explored)
    none = Ranking(routes, "cache", {"strategy": "sort"})  # no share: never
    assert all(none.redraw(rng) is none for _ in range(200))


def test_reused_copy_drops_the_routers_exploration_flag() -> None:
    pick = route("c", router_wants_it=True, explorable=True)
    ranking = Ranking((pick, route("a")), "router", {"strategy": "sort", "exploration": True})
    reused = ranking.for_reuse()
    assert "exploration" not in reused.metadata
    assert reused.metadata["execution_order"] == ["a", "c"]
    assert reused.routes[-1].explorable  # still explorable per request


def test_reused_copy_drops_the_routers_exploration_reason_and_it_is_no_demotion() -> None:
    """The router's pick carries the reason `exploration` as its `deprioritized`; that is
    why it was put first, not a demotion, and it goes with the one-shot pick on reuse."""
    entry = router_pb2.RankedEndpoint(
        exploration=True, deprioritized=router_pb2.Reason(code="exploration")
    )
    entry.provider.name = "c"
    assert not Route.from_proto(entry).deprioritized
    entry.deprioritized.code = "degraded"
    assert Route.from_proto(entry).deprioritized
    why = {"code": "exploration", "detail": "exploring c"}
    metadata = {
        "strategy": "sort",
        "exploration": True,
        "deprioritized": [{"provider": "c", "reason": why}, {"provider": "b", "reason": {}}],
    }
    pick = route("c", router_wants_it=True, explorable=True)
    reused = Ranking((pick, route("a"), route("b")), "router", metadata).for_reuse()
    assert reused.metadata["deprioritized"] == [{"provider": "b", "reason": {}}]
    only_pick = dict(metadata, deprioritized=[{"provider": "c", "reason": why}])
    reused = Ranking((pick, route("a")), "router", only_pick).for_reuse()
    assert "deprioritized" not in reused.metadata


@pytest.mark.parametrize(
    ("ms", "expected"),
    [(2500.0, 2.5), (None, None), (0.0, None), (-5.0, None), (math.nan, None), (7e5, None)],
)
def test_suggested_timeouts_are_read_within_their_bounds(
    ms: float | None, expected: float | None
) -> None:
    ep = router_pb2.RankedEndpoint(provider=router_pb2.ProviderInfo(name="a", base_url="http://x"))
    if ms is not None:
        ep.first_token_timeout_ms = ms
        ep.hedge_after_ms = ms
    r = Route.from_proto(ep)
    assert r.first_token_timeout_s == expected and r.hedge_after_s == expected


def test_first_token_timeout_is_the_smaller_of_config_and_suggestion() -> None:
    s = SidecarSettings(first_byte_timeout_s=30.0)
    assert first_token_timeout(s, route("a", first_token_timeout_s=1.5)).seconds == 1.5
    assert first_token_timeout(s, route("a", first_token_timeout_s=90.0)).seconds == 30.0
    assert first_token_timeout(s, route("a")).seconds == 30.0
    off = SidecarSettings(first_byte_timeout_s=30.0, adaptive_first_token_timeout=False)
    assert first_token_timeout(off, route("a", first_token_timeout_s=1.5)).seconds == 30.0


def test_exploration_draws_the_explorable_routes_by_the_routers_promise_weights() -> None:
    fast_usually = route("b", explorable=True, exploration_weight=1.0)
    slow_always = route("c", explorable=True, exploration_weight=0.1)
    ranking = Ranking(
        (route("a", weight=1.0), slow_always, fast_usually),
        "cache",
        {"strategy": "sort", "exploration_share": 1.0},
    )
    rng = random.Random(5)
    firsts = Counter(ranking.redraw(rng).routes[0].provider for _ in range(4000))
    assert firsts["a"] == 0  # share 1: every request explores
    assert 0.86 < firsts["b"] / 4000 < 0.96  # 1 / 1.1 = 0.91
    assert firsts["b"] + firsts["c"] == 4000


@pytest.mark.parametrize(
    ("weight", "expected"),
    [(0.25, 0.25), (1.0, 1.0), (None, 1.0), (0.0, 1.0), (-1.0, 1.0), (1.5, 1.0), (math.nan, 1.0)],
)
def test_exploration_weight_is_read_within_its_bounds(
    weight: float | None, expected: float
) -> None:
    ep = router_pb2.RankedEndpoint(
        provider=router_pb2.ProviderInfo(name="a", base_url="http://x"), explorable=True
    )
    if weight is not None:
        ep.exploration_weight = weight
    assert Route.from_proto(ep).exploration_weight == expected
