"""Hedging end to end (real router, sidecar, fake providers) and its budget on a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import pytest
from sidecar_helpers import MODEL, Stack, openai_client, stream_text_and_routing, wait_for

from router_common.domain import ErrorClass
from router_service.ranking import RankingConfig
from sidecar.hedging import HedgeBudget, Hedger
from sidecar.preferences import RequestError, parse_request
from tests.conftest import FakeClock

MSGS = [{"role": "user", "content": "hello there, a prompt of some length"}]
ORDER = ["alpha", "beta", "gamma"]


async def _stream(client: Any, **prefs: Any) -> dict[str, Any]:
    text, routing = await stream_text_and_routing(client, MSGS, **prefs)
    assert text
    return routing


async def _warm(stack: Stack, **sidecar: Any) -> Any:
    """Router + sidecar, and alpha measured enough for the router to suggest a hedge delay."""
    await stack.add_providers({"alpha": {}, "beta": {}, "gamma": {}})
    stack.write_catalog()
    router = await stack.start_router(
        ranking=RankingConfig(first_token_timeout_min_samples=5, exploration_share_unknown=0)
    )
    # The adaptive timeout is off: only a hedge can rescue a request from a hang.
    sc = await stack.start_sidecar(
        router.grpc_address,
        first_byte_timeout_s=30.0,
        adaptive_first_token_timeout=False,
        **sidecar,
    )
    client = openai_client(sc)
    parsed = parse_request({"model": MODEL, "messages": MSGS, "provider": {"order": ORDER}})

    async def alpha_has_a_hedge_delay() -> bool:
        await _stream(client, order=ORDER, hedge=False)
        hit = sc.ranking.cached(parsed)
        return hit is not None and hit.routes[0].hedge_after_s is not None

    await wait_for(alpha_has_a_hedge_delay, timeout=15)
    return sc, client


async def test_hedge_first_token_wins_and_the_losers_upstream_is_closed(stack: Stack) -> None:
    sc, client = await _warm(stack)
    stack.providers["alpha"].add_incident("hang")
    hung_before = len(stack.providers["alpha"].requests)
    routing = await _stream(client, order=ORDER, hedge=True)
    assert routing["provider"] == "beta"
    first, backup = routing["attempts"]
    assert first["provider"] == "alpha" and first["cancelled"] is True
    assert first["error_class"] == "cancelled"
    assert first["estimated_cost_usd"] > 0  # the prompt was sent: its input is billed
    assert backup["provider"] == "beta" and backup["hedge"] is True and backup["status"] == "ok"
    # The loser's connection is closed at once: the hung handler sees its client go
    # (without that it would hang for the 30 s first-byte timeout).
    hung = stack.providers["alpha"].requests[hung_before]
    await wait_for(lambda: hung.duration_ms is not None, timeout=5)
    # gamma (third) was never started: one backup at most.
    assert not any(a["provider"] == "gamma" for a in routing["attempts"])
    metrics = sc.metrics.hedges.labels("won")._value.get()
    assert metrics == 1
    # The loser is reported: no verdict on alpha's health, but its wait (a lower bound
    # of its TTFT) reaches the router.
    router = stack.router
    await wait_for(lambda: router.core.outcomes_by_class["cancelled"] == 1, timeout=5)
    assert router.core.outcomes_by_class["timeout"] == 0


async def test_a_backup_that_fails_while_the_first_attempt_hangs_is_replaced(
    stack: Stack,
) -> None:
    """The backup failed at once (a 503) while the first attempt hung: the hedge used
    to end there, leaving the request on the hung attempt until its first-token timeout
    (30 s here) before gamma was even tried. The next provider replaces the backup."""
    sc, client = await _warm(stack)
    stack.providers["alpha"].add_incident("hang")
    stack.providers["beta"].add_incident("fail", status=503)
    hung_before = len(stack.providers["alpha"].requests)
    routing = await _stream(client, order=ORDER, hedge=True)
    assert routing["provider"] == "gamma"
    first, backup, replacement = routing["attempts"]
    assert first["provider"] == "alpha" and first["cancelled"] is True  # not timed out
    assert backup["provider"] == "beta" and backup["hedge"] is True
    assert backup["status"] != "ok" and "cancelled" not in backup
    assert replacement["provider"] == "gamma" and replacement["hedge"] is True
    assert replacement["status"] == "ok"
    hung = stack.providers["alpha"].requests[hung_before]
    await wait_for(lambda: hung.duration_ms is not None, timeout=5)  # its upstream closed
    assert sc.metrics.hedges.labels("won")._value.get() == 1


async def test_hedge_budget_caps_hedged_requests(stack: Stack) -> None:
    sc, client = await _warm(stack, hedge=True, hedge_budget_share=0.01)
    stack.providers["alpha"].add_incident("slowdown", factor=40.0)  # slow, but answers
    hedged = 0
    for _ in range(4):
        routing = await _stream(client, order=ORDER)  # the sidecar flag turns hedging on
        hedged += any(a.get("hedge") for a in routing["attempts"])
    assert hedged == 1  # 1% of 4 requests: only the "+1" of the budget
    # Never two streams: exactly one attempt per request ended "ok".
    assert sc.metrics.hedges.labels("won")._value.get() <= 1


def test_budget_allows_share_of_requests_plus_one_and_decays() -> None:
    clock = FakeClock()
    budget = HedgeBudget(0.05, clock, tau_s=60.0)
    taken = 0
    for _ in range(200):
        budget.note_request()
        taken += budget.try_take()
    assert taken <= 0.05 * 200 + 1 and taken >= 0.05 * 200 - 1
    clock.advance(600)  # ten time constants: the window has forgotten
    budget.note_request()
    assert budget.try_take()  # the +1 again
    assert not budget.try_take()
    with pytest.raises(ValueError, match="share"):
        HedgeBudget(1.5, clock)


def test_routine_hedges_leave_half_the_budget_for_slow_starts() -> None:
    clock = FakeClock()
    budget = HedgeBudget(0.05, clock, tau_s=60.0)
    routine = 0
    for _ in range(400):  # every request passes its p95: routine hedges stop at 2.5% (+1)
        budget.note_request()
        routine += budget.try_take(routine=True)
    assert 0.025 * 400 - 1 <= routine <= 0.025 * 400 + 1
    late = sum(budget.try_take() for _ in range(50))  # the reserve, for slow starts
    assert 0.025 * 400 - 2 <= late <= 0.025 * 400 + 1
    assert not budget.try_take() and not budget.try_take(routine=True)


def test_hedge_option_from_both_conventions() -> None:
    body = {"model": MODEL, "messages": MSGS}
    assert parse_request(body).hedge is None
    assert parse_request({**body, "provider": {"hedge": True}}).hedge is True
    vercel = {**body, "providerOptions": {"gateway": {"hedge": False}}}
    assert parse_request(vercel).hedge is False
    with pytest.raises(RequestError, match=r"provider\.hedge conflicts"):
        parse_request({**vercel, "provider": {"hedge": True}})
    with pytest.raises(RequestError, match="must be a boolean"):
        parse_request({**body, "provider": {"hedge": "yes"}})
    # Not a routing preference: the cache key ignores it.
    assert (
        parse_request({**body, "provider": {"hedge": True}}).cache_key
        == parse_request({**body, "provider": {}}).cache_key
    )


class _RaceProxy:
    """The hooks a hedge uses: the first route never answers, the backup at once."""

    def __init__(self) -> None:
        self.finished: list[str] = []

    def started_at(self) -> float:
        return time.time()

    def _key_for(self, route: Any, rec: Any) -> tuple[bool, str | None]:
        return True, None

    def _finish_attempt(self, req: Any, rec: Any) -> None:
        self.finished.append(rec.provider)

    async def _open_stream(self, req: Any, route: Any, key: Any, rec: Any, *rest: Any) -> Any:
        if route.provider == "slow":
            await asyncio.sleep(30)
        return (object(), object())


@pytest.mark.parametrize(
    ("prefs", "marked"),
    [
        ({"sort": "latency"}, True),
        ({}, True),
        ({"sort": "price"}, False),
        ({"order": ["slow", "fast"]}, False),
    ],
)
async def test_a_first_attempt_that_loses_its_race_is_marked_slow_under_speed_orders(
    prefs: dict[str, Any], marked: bool
) -> None:
    from sidecar.config import SidecarSettings
    from sidecar.ranking_client import Route
    from sidecar.upstream import AttemptRecord

    slow_marks: list[tuple[str, str]] = []
    hedger = Hedger(
        SidecarSettings(hedge_min_delay_s=0.01),
        on_slow=lambda model, provider: slow_marks.append((model, provider)),
    )
    req = parse_request({"model": MODEL, "messages": MSGS, "stream": True, "provider": prefs})
    slow = Route("slow", "http://127.0.0.1:1/v1", "", False, "m", hedge_after_s=0.01)
    fast = Route("fast", "http://127.0.0.1:2/v1", "", False, "m")
    rec = AttemptRecord("slow", "m", 0.0)
    records = [rec]
    _, winner, _, started = await hedger.open(
        _RaceProxy(),
        req,
        slow,
        [fast],
        None,
        rec,
        1e9,
        records,  # type: ignore[arg-type]
    )
    assert started and winner.provider == "fast"
    assert slow_marks == ([(MODEL, "slow")] if marked else [])


class _FailingLeaderProxy(_RaceProxy):
    """An explored pick that never answers, a leader that fails at once, a third that works."""

    async def _open_stream(self, req: Any, route: Any, key: Any, rec: Any, *rest: Any) -> Any:
        if route.provider == "leader":
            rec.finish_error(ErrorClass.SERVER_ERROR, "503", 503)
            return None
        return await super()._open_stream(req, route, key, rec, *rest)


async def test_an_exploration_race_whose_leader_fails_goes_on_to_the_next_provider() -> None:
    """Under ``sort: ttft`` an exploration pick races the leader; when the leader fails at
    once, the request must not wait on the pick alone (no data: the configured 30 s)."""
    from sidecar.config import SidecarSettings
    from sidecar.ranking_client import Route
    from sidecar.upstream import AttemptRecord

    proxy = _FailingLeaderProxy()
    hedger = Hedger(SidecarSettings())
    req = parse_request({"model": MODEL, "messages": MSGS, "stream": True})
    routes = [
        Route(p, f"http://127.0.0.1:{i}/v1", "", False, "m")
        for i, p in enumerate(("slow", "leader", "third"), start=1)
    ]
    rec = AttemptRecord("slow", "m", 0.0)
    records = [rec]
    _, winner, route, started = await hedger.open(
        proxy,
        req,
        routes[0],
        routes[1:],
        None,
        rec,
        1e9,
        records,
        race=True,  # type: ignore[arg-type]
    )
    assert (winner.provider, route.provider, started) == ("third", "third", 2)
    assert [r.provider for r in records] == ["slow", "leader", "third"]
    assert proxy.finished == ["leader"]  # the failure is reported; the pick is still measured
    assert records[0].extra == {"cancelled": True, "estimated_cost_usd": 0.0}
    await hedger.close()


async def test_attempts_header_counts_the_hedge_when_the_first_attempt_wins(stack: Stack) -> None:
    """Found by an audit: the first attempt winning after its hedge had started answered
    ``x-router-attempts: 1`` while ``routing.attempts`` listed both (the header was built
    when the first attempt opened, before the backup existed)."""
    sc, client = await _warm(stack)
    stack.providers["alpha"].add_incident("slowdown", factor=30.0)  # past its hedge delay
    stack.providers["beta"].add_incident("hang")  # the backup never answers: alpha wins
    core = stack.router.core
    answered = core.outcomes_by_class["none"]
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MSGS,
        max_tokens=4,
        stream=True,
        extra_body={"provider": {"order": ORDER, "hedge": True}},
    )
    routing = None
    async for chunk in raw.parse():
        routing = (chunk.model_extra or {}).get("routing") or routing
    assert routing is not None and routing["provider"] == "alpha"
    first, backup = routing["attempts"]
    assert first["status"] == "ok" and backup["hedge"] is True and backup["cancelled"] is True
    assert raw.headers["x-router-provider"] == "alpha"
    assert raw.headers["x-router-attempts"] == "2" == str(len(routing["attempts"]))
    assert sc.metrics.hedges.labels("lost")._value.get() == 1
    assert sc.metrics.hedge_cancelled_cost._value.get() == pytest.approx(
        backup["estimated_cost_usd"]
    )
    # A backup that lost is not reported: its wait ended with alpha's answer and says
    # little about beta (the router would take it as a lower bound of beta's TTFT).
    # Reported in order, it would have arrived before alpha's answer.
    await wait_for(lambda: core.outcomes_by_class["none"] > answered, timeout=5)
    assert core.outcomes_by_class["cancelled"] == 0


async def test_app_leaving_while_a_hedge_is_pending_closes_the_first_attempt(
    stack: Stack,
) -> None:
    """Found by a leak audit: an app that left while its first attempt waited out the
    hedge delay left that attempt running, its upstream connection open, until the
    provider's first token or the first-byte timeout (100 requests cut within 0.1 s
    left 99 upstream sockets open for the provider's whole 10 s time to first token;
    without hedging, none). The provider must see its connection closed at once.
    """
    # A hedge delay far longer than the test, so the app leaves inside it.
    sc, _ = await _warm(stack, hedge_min_delay_s=20.0)
    alpha = stack.providers["alpha"]
    alpha.add_incident("hang")  # the first token never comes: only the sidecar can close it
    before = len(alpha.requests)
    beta_before = len(stack.providers["beta"].requests)
    payload = {
        "model": MODEL,
        "messages": MSGS,
        "stream": True,
        "provider": {"order": ORDER, "hedge": True},
    }
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(session.post(sc.base_url + "/chat/completions", json=payload))
        await wait_for(lambda: len(alpha.requests) > before, timeout=5)
        task.cancel()  # the app leaves: its connection to the sidecar is closed
        with contextlib.suppress(asyncio.CancelledError):
            await task
    hung = alpha.requests[before]
    # Closed by the sidecar within seconds, not after the 30 s first-byte timeout.
    await wait_for(lambda: hung.duration_ms is not None, timeout=5)
    await wait_for(lambda: sc.metrics.requests.labels("499")._value.get() == 1, timeout=5)
    assert len(stack.providers["beta"].requests) == beta_before  # no hedge was started
