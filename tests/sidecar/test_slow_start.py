"""This sidecar's own view of speed: slow starts move an endpoint back at once, a fresh
router's unmeasured endpoints are redrawn per request and their ranking reused only briefly."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from sidecar_helpers import MODEL, Stack, openai_client, wait_for

from router_service.ranking import RankingConfig
from sidecar.config import SidecarSettings
from sidecar.preferences import parse_request
from sidecar.ranking_client import Cooldowns, Ranking, RankingClient, Route
from sidecar.timeouts import FirstTokenTimeout, slow_start_after
from tests.conftest import FakeClock

MSGS = [{"role": "user", "content": "hi"}]


def route(name: str, **kw: Any) -> Route:
    return Route(name, "http://127.0.0.1:1/v1", "", False, name, **kw)


def req(**prefs: Any) -> Any:
    return parse_request({"model": MODEL, "messages": MSGS, "stream": True, "provider": prefs})


def test_a_slow_start_moves_the_endpoint_back_until_its_time_is_up_not_at_its_success() -> None:
    clock = FakeClock()
    cd = Cooldowns(8, clock)
    routes = (route("a"), route("b"), route("c"))
    cd.slow(MODEL, "a", 3.0)
    assert [r.provider for r in cd.apply(MODEL, routes)] == ["b", "c", "a"]
    cd.succeed(MODEL, "a")  # the slow attempt itself answered in the end: still slow
    assert [r.provider for r in cd.apply(MODEL, routes)] == ["b", "c", "a"]
    assert cd.apply("other/model", routes)[0].provider == "a"  # per model
    clock.now += 3.0
    assert [r.provider for r in cd.apply(MODEL, routes)] == ["a", "b", "c"]
    # A probe or exploration the router asked for is not overridden.
    cd.slow(MODEL, "a", 3.0)
    wanted = (route("a", router_wants_it=True), route("b"))
    assert cd.apply(MODEL, wanted)[0].provider == "a"


def test_slow_cooldowns_are_bounded() -> None:
    cd = Cooldowns(4, FakeClock())
    for i in range(100):
        cd.slow(MODEL, f"p{i}", 10.0)
    assert sum(cd.cooling(MODEL, f"p{i}") for i in range(100)) == 4


def test_slow_start_is_watched_only_when_speed_orders_and_data_exists() -> None:
    s = SidecarSettings(slow_start_multiple=2.0, hedge_min_delay_s=0.05)
    measured = route("a", hedge_after_s=0.2)
    assert slow_start_after(s, req(sort="latency"), measured) == 0.4
    assert slow_start_after(s, req(), measured) == 0.4  # load balancing
    assert slow_start_after(s, req(sort="latency"), route("a", hedge_after_s=0.01)) == 0.05
    assert slow_start_after(s, req(sort="latency"), route("a")) is None  # no data: no p95
    assert slow_start_after(s, req(sort="price"), measured) is None
    assert slow_start_after(s, req(sort="throughput"), measured) is None
    assert slow_start_after(s, req(order=["a"]), measured) is None
    off = SidecarSettings(slow_start_multiple=0.0)
    assert slow_start_after(off, req(sort="latency"), measured) is None


def test_a_fresh_routers_unmeasured_endpoints_are_redrawn_per_request() -> None:
    # Every endpoint "no data" (deprioritized), weighted equally by the router.
    unknown = [route(n, weight=1.0, deprioritized=True, ttft_known=False) for n in "abcd"]
    ranking = Ranking(tuple(unknown), "cache", {"strategy": "sort"})
    rng = random.Random(5)
    firsts = Counter(ranking.redraw(rng).routes[0].provider for _ in range(4000))
    assert set(firsts) == set("abcd") and max(firsts.values()) / 4000 < 0.3
    # Measured ones lead: the deprioritized tail keeps its place behind them.
    mixed = Ranking(
        (route("a", weight=1.0), route("b", weight=1.0), *unknown[2:]),
        "cache",
        {"strategy": "sort"},
    )
    assert all(mixed.redraw(rng).routes[2].provider == "c" for _ in range(500))


class _Stub:
    """Answers RankProviders with one fixed response, counting calls."""

    def __init__(self, ttft_known: bool) -> None:
        from router_common.pb import router_pb2

        ep = router_pb2.RankedEndpoint(upstream_model="m")
        ep.provider.name = "a"
        ep.provider.base_url = "http://127.0.0.1:1/v1"
        if ttft_known:
            ep.ttft_ms = 100.0
        self.resp = router_pb2.RankProvidersResponse(endpoints=[ep])
        self.calls = 0

    async def RankProviders(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        return self.resp


async def test_a_ranking_led_by_an_unmeasured_endpoint_is_reused_only_briefly() -> None:
    settings = SidecarSettings(rank_cache_ttl_s=2.0, rank_cache_unmeasured_ttl_s=0.5)
    for known, prefs, fresh_at_1s in (
        (False, {"sort": "latency"}, False),  # no data yet: refreshed after 0.5 s
        (True, {"sort": "latency"}, True),  # measured: the normal 2 s
        (False, {"sort": "price"}, True),  # not ordered by speed: the normal 2 s
    ):
        clock = FakeClock()
        stub = _Stub(known)
        rc = RankingClient(settings, stub, None, clock=clock)  # type: ignore[arg-type]
        r = req(**prefs)
        await rc.rank(r)
        clock.now += 0.4
        assert rc.cached(r) is not None and rc.refreshes_in_flight == 0
        clock.now += 0.6
        assert rc.cached(r) is not None  # served either way (stale-while-revalidate)
        assert (rc.refreshes_in_flight == 0) is fresh_at_1s, (known, prefs)
        await rc.close()


async def test_a_provider_that_slows_is_moved_back_by_the_first_attempt_that_waits(
    stack: Stack,
) -> None:
    # alpha fast, beta slower: sort ttft sends everything to alpha once measured.
    await stack.add_providers({"alpha": {"ttft_median_ms": 5.0}, "beta": {"ttft_median_ms": 40.0}})
    stack.write_catalog()
    router = await stack.start_router(
        ranking=RankingConfig(exploration_share=0, exploration_share_unknown=0)
    )
    # A long ranking cache: only this sidecar's own view can move alpha back.
    sc = await stack.start_sidecar(
        router.grpc_address, rank_cache_ttl_s=60.0, slow_start_cooldown_s=60.0
    )
    client = openai_client(sc)
    parsed = req(sort="latency")

    async def stream() -> dict[str, Any]:
        s = await client.chat.completions.create(
            model=MODEL,
            messages=MSGS,
            max_tokens=2,
            stream=True,
            extra_body={"provider": {"sort": "latency"}},
        )
        routing = None
        async for chunk in s:
            routing = (chunk.model_extra or {}).get("routing", routing)
        assert routing is not None
        return routing

    async def alpha_leads_with_a_p95() -> bool:
        sc.ranking._cache.clear()  # ask the router again until it has measured both
        await stream()
        await stream()
        hit = sc.ranking.cached(parsed)
        return (
            hit is not None
            and hit.routes[0].provider == "alpha"
            and hit.routes[0].hedge_after_s is not None
        )

    await wait_for(alpha_leads_with_a_p95, timeout=15)
    stack.providers["alpha"].add_incident("slowdown", factor=40.0)  # 5 ms -> 200 ms
    first = await stream()
    assert first["provider"] == "alpha" and first["source"] == "cache"
    second = await stream()  # the same cached ranking, but alpha was caught slow
    assert second["source"] == "cache"
    assert second["provider"] == "beta"
    assert second["planned_order"] == ["beta", "alpha"]


class _TwoStub:
    """A ranking led by a measured ``a`` (p95 200 ms), with ``b`` explorable behind it."""

    def __init__(self) -> None:
        from router_common.pb import router_pb2

        a = router_pb2.RankedEndpoint(upstream_model="m", ttft_ms=150.0, hedge_after_ms=200.0)
        a.provider.name, a.provider.base_url = "a", "http://127.0.0.1:1/v1"
        b = router_pb2.RankedEndpoint(upstream_model="m", ttft_ms=500.0, explorable=True)
        b.provider.name, b.provider.base_url = "b", "http://127.0.0.1:2/v1"
        self.resp = router_pb2.RankProvidersResponse(endpoints=[a, b])

    async def RankProviders(self, *args: Any, **kw: Any) -> Any:
        return self.resp


async def test_an_exploration_that_beats_the_leader_expires_the_ranking_after_the_flush() -> None:
    settings = SidecarSettings(rank_cache_ttl_s=2.0, outcome_flush_interval_s=0.5)
    r = req(sort="latency")
    for ttft_s, explorable, expected_refresh in (
        (0.08, True, True),  # b recovered: faster than a's p95
        (0.30, True, False),  # still slower than a's p95: nothing to learn quickly
        (0.08, False, False),  # not an exploration (measured, fresh data)
    ):
        clock = FakeClock()
        rc = RankingClient(settings, _TwoStub(), None, clock=clock)  # type: ignore[arg-type]
        ranking = await rc.rank(r)
        b = next(x for x in ranking.routes if x.provider == "b")
        rc.note_first_token(r, Route(**{**_fields(b), "explorable": explorable}), ttft_s)
        clock.now += 0.5  # before the flush has reached the router: still the cached order
        assert rc.cached(r) is not None and rc.refreshes_in_flight == 0
        clock.now += 0.2  # after it: asked again (at 0.7 s, not 2 s)
        assert rc.cached(r) is not None
        assert (rc.refreshes_in_flight == 1) is expected_refresh, (ttft_s, explorable)
        await rc.close()


def _fields(route: Route) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(route, f.name) for f in dataclasses.fields(route) if f.init}


async def test_one_timer_notes_the_slow_start_then_times_out_at_the_limit() -> None:
    """The first-token wait and the slow-start watch share one timer: the mark comes
    at its time and the wait still ends at its limit, as two timers did."""
    loop = asyncio.get_running_loop()
    marked: list[float] = []
    start = loop.time()
    never: asyncio.Future[None] = loop.create_future()
    try:
        async with FirstTokenTimeout(start + 0.2, start + 0.05, lambda: marked.append(loop.time())):
            await never
        raise AssertionError("the wait should have timed out")
    except TimeoutError:
        pass
    assert len(marked) == 1 and marked[0] - start >= 0.05  # once, at its time
    assert loop.time() - start >= 0.2  # and the wait went on to its limit
    # A first token before the watch's time: no mark, no timeout.
    done: asyncio.Future[None] = loop.create_future()
    loop.call_soon(done.set_result, None)
    async with FirstTokenTimeout(loop.time() + 5, loop.time() + 1, lambda: marked.append(0.0)):
        await done
    assert len(marked) == 1
    # The app leaving (a cancel from outside) is a cancel, not a timeout.
    entered = asyncio.Event()

    async def wait() -> None:
        async with FirstTokenTimeout(loop.time() + 5, loop.time() + 1, lambda: None):
            entered.set()
            await loop.create_future()

    task = asyncio.create_task(wait())
    await entered.wait()
    task.cancel()
    try:
        await task
        raise AssertionError("the cancel should have propagated")
    except asyncio.CancelledError:
        pass
    assert task.cancelled()
