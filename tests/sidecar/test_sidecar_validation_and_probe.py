"""Validation that does not depend on the ranking source, and probes under `order` (items 9, 10)."""

from __future__ import annotations

import time

import grpc
import openai
import pytest
from sidecar_helpers import MODEL, Stack, openai_client, wait_for

from router_common.limits import MAX_PROVIDER_LIST
from router_common.pb import router_pb2, router_pb2_grpc
from tests.conftest import FakeClock

MSGS = [{"role": "user", "content": "hello there"}]

BAD_PREFERENCES = [
    ({"order": [f"p{i}" for i in range(10_000)]}, "preferences.order: at most"),
    ({"ignore": [f"p{i}" for i in range(MAX_PROVIDER_LIST + 1)]}, "preferences.ignore: at most"),
    ({"order": ["alpha", "alpha"]}, 'lists provider "alpha" more than once'),
    ({"order": ["alpha"], "ignore": ["alpha"]}, "providers also in ignore"),
    ({"only": ["beta"], "ignore": ["beta"]}, "providers in both only and ignore"),
    ({"order": ["x" * 200]}, "provider names must be 1..128 characters"),
    ({"only": ["alpha", "ghost"]}, 'preferences.only: provider "ghost" is not in the catalog'),
    ({"ignore": ["ghost"]}, 'preferences.ignore: provider "ghost" is not in the catalog'),
]


async def _refusal(sc, prefs: dict) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as err:
        await openai_client(sc).chat.completions.create(
            model=MODEL, messages=MSGS, max_tokens=3, extra_body={"provider": prefs}
        )
    return err.value


@pytest.mark.parametrize(("prefs", "needle"), BAD_PREFERENCES)
async def test_bad_preferences_are_refused_alike_from_every_ranking_source(
    stack: Stack, prefs: dict, needle: str
) -> None:
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.write_catalog()
    router = await stack.start_router()
    address = router.grpc_address
    answers = []
    # 1. The router answers.
    sc = await stack.start_sidecar(address, fallback=True)
    answers.append(await _refusal(sc, prefs))
    # 2. The router is down: the fallback catalog would rank.
    await stack.stop_router()
    answers.append(await _refusal(sc, prefs))
    await sc.stop()
    # 3. No router configured at all: the fallback catalog only.
    sc = await stack.start_sidecar(fallback=True)
    answers.append(await _refusal(sc, prefs))
    for ans in answers:
        assert ans.status_code == 400
        assert ans.body == answers[0].body
    assert needle in answers[0].message
    assert answers[0].body["code"] == "invalid_routing_preferences"
    assert answers[0].body["param"].startswith("provider.")
    assert stack.counts() == {"alpha": 0, "beta": 0}


@pytest.mark.parametrize(("prefs", "needle"), BAD_PREFERENCES)
async def test_the_router_refuses_the_same_preferences_in_the_same_words(
    stack: Stack, prefs: dict, needle: str
) -> None:
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(fallback=True)
    ours = await _refusal(sc, prefs)
    msg = router_pb2.RankProvidersRequest(model=MODEL)
    for name in ("order", "only", "ignore"):
        getattr(msg.preferences, name).extend(prefs.get(name, []))
    async with grpc.aio.insecure_channel(router.grpc_address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as rpc:
            await router_pb2_grpc.RouterStub(ch).RankProviders(msg, timeout=2)
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc.value.details() == ours.body["message"]


async def _health(address: str, provider: str) -> int:
    async with grpc.aio.insecure_channel(address) as ch:
        resp = await router_pb2_grpc.RouterStub(ch).GetModelEndpoints(
            router_pb2.GetModelEndpointsRequest(model=MODEL), timeout=2
        )
    return next(e.health.state for e in resp.endpoints if e.provider.name == provider)


async def test_an_ordered_provider_gets_its_probe_and_its_place_back(stack: Stack) -> None:
    """A workload that always sends `order` sees its first choice recover."""
    from router_service.app import RouterApp, Settings
    from router_service.health import HealthConfig

    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.providers["alpha"].add_incident("fail", status=503)
    stack.write_catalog()
    clock = FakeClock(time.time())
    stack.router = RouterApp(
        Settings(
            config_path=str(stack.catalog_path),
            grpc_host="127.0.0.1",
            grpc_port=0,
            http_host="127.0.0.1",
            http_port=0,
            drain_seconds=0.2,
            watch_catalog=False,
            seed=7,
            health=HealthConfig(
                consecutive_failures_to_eject=2, base_ejection_s=5.0, ejection_jitter=0.0
            ),
        ),
        clock=clock,
    )
    await stack.router.start()
    address = stack.router.grpc_address
    sc = await stack.start_sidecar(address, rank_cache_ttl_s=0.0, cooldown_s=0.0)
    client = openai_client(sc)

    async def served_by() -> str:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=MSGS,
            max_tokens=3,
            extra_body={"provider": {"order": ["alpha", "beta"]}},
        )
        return raw.headers["x-router-provider"]

    assert [await served_by() for _ in range(2)] == ["beta", "beta"]  # alpha failed twice
    ejected = router_pb2.HEALTH_STATE_EJECTED
    await wait_for(lambda: sc.reporter.sent >= 4, timeout=5)
    assert await _health(address, "alpha") == ejected
    stack.providers["alpha"].clear_incidents()  # alpha recovers ...
    clock.advance(6.0)  # ... and its ejection ends: half-open
    assert await _health(address, "alpha") == router_pb2.HEALTH_STATE_PROBING
    # Every request still says `order`; alpha takes its probes and its first place back.
    for sent in (5, 6):
        assert await served_by() == "alpha"
        await wait_for(lambda n=sent: sc.reporter.sent >= n, timeout=5)
    assert await _health(address, "alpha") == router_pb2.HEALTH_STATE_HEALTHY
    assert await served_by() == "alpha"


async def test_a_provider_the_catalog_does_not_know_is_a_400_naming_it(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(router.grpc_address)
    refusal = await _refusal(sc, {"only": ["alpha", "ghost"]})
    assert refusal.status_code == 400
    assert refusal.body["code"] == "invalid_routing_preferences"
    assert refusal.body["param"] == "provider.only"
    assert refusal.body["message"] == 'preferences.only: provider "ghost" is not in the catalog'
    assert stack.counts() == {"alpha": 0, "beta": 0}
