"""Issue 16d, end to end with a real router, sidecar and fake providers: evidence the router
lacks is sent at once (bounded), a ranking it contradicts is asked again once delivered,
and a reused ranking explores endpoints gone stale since its fetch, paced and in turn."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from sidecar_helpers import MODEL, Stack, openai_client, router_ttft, wait_for

from router_common.pb import router_pb2
from router_service.ranking import RankingConfig
from sidecar.config import SidecarSettings
from sidecar.preferences import ParsedRequest, parse_request
from sidecar.ranking_client import Ranking, Route, _with_peer_p95
from sidecar.timeouts import slow_start_after

MSGS = [{"role": "user", "content": "hello there"}]
#: Regular flushes never happen within a test: only urgent ones can deliver.
NEVER_S = 600.0


async def _stream(client: Any, **prefs: Any) -> dict[str, Any]:
    stream = await client.chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=2, stream=True, extra_body={"provider": prefs}
    )
    routing = None
    async for chunk in stream:
        routing = (chunk.model_extra or {}).get("routing", routing)
    assert routing is not None
    return routing


def _req(**prefs: Any) -> ParsedRequest:
    body = {"model": MODEL, "messages": MSGS, "stream": True, "provider": prefs}
    return parse_request(body)


async def test_a_fresh_routers_first_answer_reaches_it_at_once_and_reorders_the_sidecar(
    stack: Stack,
) -> None:
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.write_catalog()
    router = await stack.start_router(
        ranking=RankingConfig(exploration_share=0, exploration_share_unknown=0)
    )
    # Regular flushes and ranking reuse both far longer than the test: the router can
    # only hear of the answer through an urgent flush, and the sidecar only re-ask
    # because that delivery expired its ranking.
    sc = await stack.start_sidecar(
        router.grpc_address,
        outcome_flush_interval_s=NEVER_S,
        rank_cache_ttl_s=NEVER_S,
        rank_cache_unmeasured_ttl_s=NEVER_S,
        rank_revalidate_s=NEVER_S,
    )
    client = openai_client(sc)
    first = (await _stream(client, sort="latency"))["provider"]
    assert sc.reporter is not None and sc.ranking is not None

    async def router_has_it() -> bool:
        return await router_ttft(router.grpc_address, first) is not None

    await wait_for(router_has_it, timeout=5)

    async def sidecar_ranks_on_data() -> bool:
        await _stream(client, sort="latency")  # a cached hit starts the refresh
        hit = sc.ranking.cached(_req(sort="latency"))
        return hit is not None and hit.routes[0].ttft_known

    await wait_for(sidecar_ranks_on_data, timeout=5)
    assert sc.reporter.urgent_wakes >= 1


async def test_an_endpoints_first_failure_here_is_sent_at_once(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(router.grpc_address, outcome_flush_interval_s=NEVER_S)
    client = openai_client(sc)
    stack.providers["alpha"].add_incident("fail", status=503)
    routing = await _stream(client, order=["alpha", "beta"])
    assert routing["provider"] == "beta"
    assert sc.reporter is not None
    # alpha's failure is news (its first here): delivered long before the regular flush
    await wait_for(lambda: sc.reporter.sent >= 1, timeout=5)


async def test_urgent_flushes_are_at_least_the_gap_apart(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(
        router.grpc_address, outcome_flush_interval_s=NEVER_S, outcome_urgent_min_gap_s=NEVER_S
    )
    rep = sc.reporter
    assert rep is not None
    outcome = router_pb2.Outcome(model=MODEL, provider="alpha", ttft_ms=5.0, success=True)
    rep.submit(outcome, urgent=True)  # the first flush of the process: at once
    await wait_for(lambda: rep.sent == 1, timeout=5)
    for _ in range(200):  # a flood: waits for the gap (one timer), no flush storm
        rep.submit(outcome, urgent=True)
    assert rep._urgent_timer is not None
    assert rep.backlog == 200 and rep.sent == 1


async def test_a_reused_ranking_explores_an_endpoint_gone_stale_since_its_fetch(
    stack: Stack,
) -> None:
    await stack.add_providers({"alpha": {"ttft_median_ms": 2.0}, "beta": {"ttft_median_ms": 30.0}})
    stack.write_catalog()
    # At the router nothing goes stale within the test and one sample is enough data:
    # beta, once measured, is never marked explorable in a ranking.
    router = await stack.start_router(
        ranking=RankingConfig(
            exploration_share=0.5, exploration_share_unknown=0, stale_after_s=600, min_samples=1
        )
    )
    sc = await stack.start_sidecar(
        router.grpc_address,
        rank_cache_ttl_s=NEVER_S,
        rank_revalidate_s=NEVER_S,
        explore_stale_after_s=0.3,
    )
    assert sc.ranking is not None
    client = openai_client(sc)
    parsed = _req(sort="latency")

    async def both_measured_alpha_first() -> bool:
        sc.ranking._cache.clear()  # ask the router again until it has measured both
        await _stream(client, order=["alpha", "beta"])
        await _stream(client, order=["beta", "alpha"])
        await _stream(client, sort="latency")
        hit = sc.ranking._cache.get(parsed.cache_key)
        return (
            hit is not None
            and hit.routes[0].provider == "alpha"
            and all(r.ttft_known and not r.explorable for r in hit.routes)
        )

    await wait_for(both_measured_alpha_first, timeout=15)

    async def beta_explored() -> bool:
        routing = await _stream(client, sort="latency")
        assert routing["source"] == "cache"  # the same reused ranking throughout
        # Explored: beta is tried first (raced against alpha, which may answer first).
        tried = [a["provider"] for a in routing["attempts"]]
        return bool(routing.get("exploration")) and tried[0] == "beta"

    await wait_for(beta_explored, timeout=10)


async def test_reused_explorations_are_paced_and_stale_endpoints_take_turns(
    stack: Stack,
) -> None:
    await stack.add_providers(
        {
            "alpha": {"ttft_median_ms": 2.0},
            "beta": {"ttft_median_ms": 20.0},
            "gamma": {"ttft_median_ms": 25.0},
        }
    )
    stack.write_catalog()
    router = await stack.start_router(
        ranking=RankingConfig(
            exploration_share=0.25, exploration_share_unknown=1.0, stale_after_s=0.001
        )
    )
    # Not raced: a raced exploration's second upstream call doubles the load on
    # these millisecond providers, and a slow-start answer would refresh the ranking.
    sc = await stack.start_sidecar(
        router.grpc_address,
        rank_cache_ttl_s=NEVER_S,
        rank_revalidate_s=NEVER_S,
        race_explorations=False,
    )
    assert sc.ranking is not None
    client = openai_client(sc)
    parsed = _req(sort="latency")

    async def alpha_leads_all_measured() -> bool:
        sc.ranking._cache.clear()
        sc.ranking._one_shot.clear()
        await _stream(client, sort="latency")
        hit = sc.ranking._cache.get(parsed.cache_key)
        return (
            hit is not None
            and hit.routes[0].provider == "alpha"
            and all(r.ttft_known for r in hit.routes)
        )

    await wait_for(alpha_leads_all_measured, timeout=15)
    explored: list[str] = []
    for _ in range(40):
        routing = await _stream(client, sort="latency")
        assert routing["source"] == "cache"
        if routing.get("exploration"):
            explored.append(routing["exploration_provider"])
    # Exactly one request in four (a coin at 0.25 lands within one of 10 about a third
    # of the time), and the two stale endpoints alternate (least recently heard first).
    assert 9 <= len(explored) <= 11, explored
    assert all(a != b for a, b in pairwise(explored)), explored


def test_an_endpoint_without_its_own_p95_is_watched_against_its_rankings_largest() -> None:
    def route(name: str, p95: float | None) -> Route:
        return Route(name, "http://127.0.0.1:1/v1", "", False, name, hedge_after_s=p95)

    routes = _with_peer_p95((route("a", 0.1), route("b", 0.3), route("c", None)))
    ranking = Ranking(routes, "router", {"strategy": "sort"})
    settings = SidecarSettings(slow_start_multiple=2.0)
    req = _req(sort="latency")
    by_name = {r.provider: r for r in ranking.routes}
    assert slow_start_after(settings, req, by_name["a"]) == 0.2  # its own p95
    assert slow_start_after(settings, req, by_name["c"]) == 0.6  # the ranking's largest
    nothing_known = _with_peer_p95((route("a", None), route("b", None)))
    assert all(slow_start_after(settings, req, r) is None for r in nothing_known)
