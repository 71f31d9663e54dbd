"""End to end with a real router, sidecar and fake providers: exploration is marked in the
routing metadata, and the router's adaptive first-token timeout cuts a hang short."""

from __future__ import annotations

from typing import Any

from sidecar_helpers import MODEL, Stack, openai_client, wait_for

from router_service.ranking import RankingConfig

MSGS = [{"role": "user", "content": "hello there"}]


async def _stream(client: Any, **prefs: Any) -> dict[str, Any]:
    stream = await client.chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=4, stream=True, extra_body={"provider": prefs}
    )
    routing = None
    async for chunk in stream:
        if "routing" in (chunk.model_extra or {}):
            routing = chunk.model_extra["routing"]
    assert routing is not None
    return routing


async def test_exploration_pick_is_marked_in_the_routing_metadata(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}, "beta": {}, "gamma": {}})
    stack.write_catalog()
    # Always explore while something is unmeasured, never otherwise: deterministic here.
    router = await stack.start_router(
        ranking=RankingConfig(exploration_share=0, exploration_share_unknown=1.0)
    )
    sc = await stack.start_sidecar(router.grpc_address, rank_cache_ttl_s=0.0)
    client = openai_client(sc)
    seen: set[str] = set()

    async def every_provider_measured() -> bool:
        routing = await _stream(client, sort="latency")
        if routing.get("exploration"):
            # The pick is named, went first, and served the request.
            assert routing["exploration_provider"] == routing["execution_order"][0]
            assert routing["attempts"][0]["provider"] == routing["exploration_provider"]
            seen.add(routing["exploration_provider"])
        return len(seen) >= 2 and not routing.get("exploration")

    await wait_for(every_provider_measured, timeout=20)
    # Exploration stops once everything has data (share 0 for merely thin/stale data).
    assert not (await _stream(client, sort="latency")).get("exploration")


async def test_adaptive_first_token_timeout_cuts_a_hang_short(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.write_catalog()
    ranking = RankingConfig(first_token_timeout_floor_ms=300.0, first_token_timeout_min_samples=5)
    router = await stack.start_router(ranking=ranking)
    # Configured ceiling: 30 s. A broken adaptive timeout makes this test hit the
    # client's timeout (20 s) and fail, rather than pass slowly.
    sc = await stack.start_sidecar(router.grpc_address, first_byte_timeout_s=30.0)
    client = openai_client(sc)

    async def alpha_has_a_suggested_timeout() -> bool:
        routing = await _stream(client, order=["alpha", "beta"])
        assert routing["provider"] == "alpha"
        hit = sc.ranking.cached(_parsed(order=["alpha", "beta"]))
        return hit is not None and hit.routes[0].first_token_timeout_s is not None

    await wait_for(alpha_has_a_suggested_timeout, timeout=15)
    stack.providers["alpha"].add_incident("hang")
    routing = await _stream(client, order=["alpha", "beta"])
    assert routing["provider"] == "beta"
    first = routing["attempts"][0]
    assert first["provider"] == "alpha" and first["error_class"] == "timeout"
    assert first["error"] == "no first token within 0.3s"  # the floor, not the 30 s ceiling


def _parsed(**prefs: Any) -> Any:
    from sidecar.preferences import parse_request

    return parse_request(
        {"model": MODEL, "messages": MSGS, "max_tokens": 4, "stream": True, "provider": prefs}
    )
