"""Exploration races end to end (real router, sidecar and fake providers): under
``sort: ttft`` an exploration pick starts beside the leader, the first token wins, and
the other attempt is read to its first token and reported, so the router learns both."""

from __future__ import annotations

from typing import Any

from sidecar_helpers import (
    Stack,
    openai_client,
    router_ttft,
    stream_text_and_routing,
    wait_for,
)

from router_service.ranking import RankingConfig

MSGS = [{"role": "user", "content": "hello there, a prompt of some length"}]
#: Every request explores (a stale endpoint first) once both are measured.
EXPLORE_ALWAYS = RankingConfig(
    exploration_share=1.0, exploration_share_unknown=1.0, stale_after_s=0.001, min_samples=1
)


async def _stream(client: Any, **prefs: Any) -> tuple[str, dict[str, Any]]:
    return await stream_text_and_routing(client, MSGS, **prefs)


async def _explored(client: Any, provider: str) -> tuple[str, dict[str, Any], set[str]]:
    """Stream until a request explores ``provider``: that answer, its routing, and
    every provider that answered a request until then."""
    found: list[tuple[str, dict[str, Any]]] = []
    served: set[str] = set()

    async def explores() -> bool:
        text, routing = await _stream(client, sort="latency")
        served.add(routing["provider"])
        if routing.get("exploration") and routing.get("exploration_provider") == provider:
            found.append((text, routing))
        return bool(found)

    await wait_for(explores, timeout=15)
    return (*found[0], served)


async def _start(stack: Stack, beta_ttft_ms: float, **sidecar: Any) -> tuple[Any, Any, Any]:
    """A fast alpha and a beta of ``beta_ttft_ms``, a router exploring on every request
    once both are measured, a sidecar (``sidecar``: its settings) and a client of it."""
    await stack.add_providers({"alpha": {}, "beta": {"ttft_median_ms": beta_ttft_ms}})
    stack.write_catalog()
    router = await stack.start_router(ranking=EXPLORE_ALWAYS)
    sc = await stack.start_sidecar(router.grpc_address, **sidecar)
    return router, sc, openai_client(sc)


async def test_a_slow_exploration_loses_the_race_and_is_still_measured(stack: Stack) -> None:
    router, sc, client = await _start(stack, beta_ttft_ms=250.0)

    text, routing, served = await _explored(client, "beta")

    # The app got one whole answer, from the leader, which answered first.
    assert text and routing["provider"] == "alpha"
    explored, leader = routing["attempts"][:2]
    # The app's view: the loser was cancelled (billed its prompt), as a hedge's is.
    assert explored["provider"] == "beta" and explored["cancelled"] is True
    assert explored["status"] in ("ok", "error") and explored["estimated_cost_usd"] > 0
    assert leader["provider"] == "alpha" and leader["race"] is True and leader["status"] == "ok"
    # The loser was read to its first token (~250 ms), closed there, and reported:
    # beta never answered the app, yet the router ranks it by what the races measured.
    assert served == {"alpha"}
    beta_ttft = await wait_for(lambda: router_ttft(router.grpc_address, "beta"))
    assert beta_ttft > 100.0
    await wait_for(lambda: sc.metrics.exploration_races.labels("leader_won")._value.get() >= 1)
    await wait_for(lambda: sc.metrics.exploration_race_cost._value.get() > 0)


async def test_a_recovered_exploration_wins_the_race_and_answers(stack: Stack) -> None:
    router, sc, client = await _start(stack, beta_ttft_ms=300.0)

    async def alpha_leads_beta_measured_slow() -> bool:
        _, routing = await _stream(client, sort="latency")
        beta_ttft = await router_ttft(router.grpc_address, "beta")
        return routing["provider"] == "alpha" and beta_ttft is not None and beta_ttft > 100.0

    await wait_for(alpha_leads_beta_measured_slow, timeout=15)
    # Now they swap: alpha slows, beta recovers; the ranking still says alpha.
    stack.providers["beta"].state.update_config(ttft_median_ms=5.0)
    stack.providers["alpha"].state.update_config(ttft_median_ms=300.0)

    def alpha_measured() -> float:
        return sc.metrics.attempts.labels("alpha", "none")._value.get()

    # Until beta is explored, alpha answers; the exploring request is the last one.
    while True:
        before = alpha_measured()
        text, routing = await _stream(client, sort="latency")
        if routing.get("exploration_provider") == "beta":
            break

    assert text and routing["provider"] == "beta"  # the exploration answered first
    explored, leader = routing["attempts"][:2]
    assert explored["provider"] == "beta" and explored["status"] == "ok"
    assert leader["provider"] == "alpha" and leader["race"] is True
    assert leader["cancelled"] is True and leader["status"] == "error"
    # The slowed leader was read on to its first token (~300 ms) and its attempt
    # finished as a success and reported: news that it is slow now.
    await wait_for(lambda: alpha_measured() == before + 1, timeout=10)
    await wait_for(lambda: sc.metrics.exploration_races.labels("explored_won")._value.get() >= 1)


async def test_no_race_when_turned_off(stack: Stack) -> None:
    _, sc, client = await _start(stack, beta_ttft_ms=50.0, race_explorations=False)

    _, routing, _ = await _explored(client, "beta")
    assert routing["provider"] == "beta"  # explored as before: in the app's path
    assert len(routing["attempts"]) == 1 and "race" not in routing["attempts"][0]
    assert sc.metrics.exploration_races.labels("leader_won")._value.get() == 0


async def test_load_balancing_explores_unraced(stack: Stack) -> None:
    _, _, client = await _start(stack, beta_ttft_ms=50.0)  # racing on (the default)

    explorations = 0
    for _ in range(10):
        _, routing = await _stream(client)  # no sort: load balancing
        explorations += bool(routing.get("exploration"))
        assert len(routing["attempts"]) == 1 and "race" not in routing["attempts"][0]
    assert explorations > 0  # load balancing explored, in the app's path
