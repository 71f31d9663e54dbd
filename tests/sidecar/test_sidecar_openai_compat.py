"""Strict OpenAI compatibility, seen through the official SDK (issue 9, items 4-7, 11, 12).

Real router (or its outage), real sidecar, fake providers.
"""

from __future__ import annotations

import logging

import aiohttp
import grpc
import openai
import pytest
from sidecar_helpers import MODEL, Stack, key_env, key_value, openai_client

from router_common.pb import router_pb2, router_pb2_grpc
from sidecar.app import SidecarApp

MSGS = [{"role": "user", "content": "hello there"}]


async def _collect(stream) -> list:
    return [chunk async for chunk in stream]


@pytest.mark.parametrize("include_usage", [False, True])
async def test_stream_chunks_are_what_openai_clients_expect(
    stack: Stack, include_usage: bool
) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(router.grpc_address)
    client = openai_client(sc)
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = await _collect(
        await client.chat.completions.create(
            model=MODEL, messages=MSGS, max_tokens=5, stream=True, **extra
        )
    )
    # model: the id the app asked for, on every chunk; the upstream's goes into routing.
    assert {c.model for c in chunks} == {MODEL}
    with_routing = [c for c in chunks if "routing" in (c.model_extra or {})]
    assert len(with_routing) == 1 and with_routing[0] is chunks[-1]
    routing = chunks[-1].model_extra["routing"]
    assert routing["upstream_model"] == "up-alpha" and routing["provider"] == "alpha"
    if include_usage:
        # Every chunk but the last has choices; the last is the usage chunk, with routing.
        assert all(c.choices for c in chunks[:-1])
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
        assert chunks[-2].choices[0].finish_reason == "length"
    else:
        # chunk.choices[0] works on every chunk; routing rides on the finish chunk.
        assert all(c.choices[0] is not None for c in chunks)
        assert chunks[-1].choices[0].finish_reason == "length"
        assert all(c.usage is None for c in chunks)
    # The sidecar still measured with the upstream's usage (it always asks for it).
    assert routing["attempts"][0]["output_tokens"] == 5
    assert stack.providers["alpha"].requests[-1].body["stream_options"] == {"include_usage": True}


async def test_non_streaming_body_names_the_requested_model(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    sc = await stack.start_sidecar(fallback=True)
    resp = await openai_client(sc).chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3)
    assert resp.model == MODEL
    assert resp.model_extra["routing"]["upstream_model"] == "up-alpha"


async def test_all_rate_limited_is_429_with_the_smallest_retry_after(stack: Stack) -> None:
    await stack.add_providers({"alpha": {"retry_after_s": 7.0}, "beta": {"retry_after_s": 3.0}})
    for fp in stack.providers.values():
        fp.add_incident("fail", status=429)
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(router.grpc_address)
    with pytest.raises(openai.RateLimitError) as err:
        await openai_client(sc).chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3)
    assert err.value.status_code == 429
    assert err.value.response.headers["retry-after"] == "3"
    assert err.value.body["code"] == "all_providers_rate_limited"


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_provider_key_is_a_502_naming_the_provider(
    stack: Stack, status: int
) -> None:
    await stack.add_providers({"alpha": {}})
    stack.providers["alpha"].add_incident("fail", status=status)
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(router.grpc_address)
    with pytest.raises(openai.APIStatusError) as err:
        await openai_client(sc).chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3)
    # Not openai.AuthenticationError/PermissionDeniedError: the app's key is fine.
    assert not isinstance(err.value, openai.AuthenticationError | openai.PermissionDeniedError)
    assert err.value.status_code == 502
    assert "provider alpha rejected the sidecar's API key" in err.value.message


@pytest.mark.parametrize("first", ["alpha", "beta"])
async def test_the_status_when_every_provider_fails_does_not_depend_on_the_last(
    stack: Stack, first: str
) -> None:
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.providers["alpha"].add_incident("fail", status=429)
    stack.providers["beta"].add_incident("fail", status=500)
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(router.grpc_address, cooldown_s=0.0)
    order = [first, "beta" if first == "alpha" else "alpha"]
    with pytest.raises(openai.APIStatusError) as err:
        await openai_client(sc).chat.completions.create(
            model=MODEL, messages=MSGS, max_tokens=3, extra_body={"provider": {"order": order}}
        )
    assert err.value.status_code == 502
    assert err.value.body["code"] == "all_providers_failed"


async def test_an_sdk_retrying_a_failed_fallback_does_not_call_the_providers_again(
    stack: Stack,
) -> None:
    """The SDKs retry every 5xx twice by default; after the sidecar's own fallback that
    tripled the calls to failing providers (2 providers: 6 upstream calls per app call)."""
    await stack.add_providers({"alpha": {}, "beta": {}})
    for fp in stack.providers.values():
        fp.add_incident("fail", status=500)
    stack.write_catalog()
    sc = await stack.start_sidecar(fallback=True)
    client = openai_client(sc, max_retries=2)  # the SDKs' default
    with pytest.raises(openai.InternalServerError) as err:
        await client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3)
    assert err.value.status_code == 502
    assert err.value.response.headers["x-should-retry"] == "false"
    assert stack.counts() == {"alpha": 1, "beta": 1}


@pytest.mark.parametrize("status", [500, 429])
async def test_one_failed_attempt_or_a_rate_limit_leaves_the_sdk_its_retries(
    stack: Stack, status: int
) -> None:
    """One attempt is what the app would have sent the provider itself, and a 429's
    Retry-After paces the SDK: neither says ``x-should-retry``."""
    await stack.add_providers({"alpha": {"retry_after_s": 1.0}})
    stack.providers["alpha"].add_incident("fail", status=status)
    stack.write_catalog()
    sc = await stack.start_sidecar(fallback=True)
    with pytest.raises(openai.APIStatusError) as err:
        await openai_client(sc).chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3)
    assert err.value.status_code == (502 if status == 500 else 429)
    assert "x-should-retry" not in err.value.response.headers


async def test_all_timed_out_is_504(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}, "beta": {}})
    for fp in stack.providers.values():
        fp.add_incident("hang")
    stack.write_catalog()
    sc = await stack.start_sidecar(fallback=True, first_byte_timeout_s=0.2)
    with pytest.raises(openai.APIStatusError) as err:
        await openai_client(sc).chat.completions.create(
            model=MODEL, messages=MSGS, max_tokens=3, stream=True
        )
    assert err.value.status_code == 504
    # Both providers were waited for: an SDK retry would wait for both again.
    assert err.value.response.headers["x-should-retry"] == "false"


async def _get(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.json()


async def test_providers_without_a_key_are_logged_counted_listed_and_skipped(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.write_catalog()
    router = await stack.start_router()
    from dataclasses import replace

    from sidecar_helpers import test_settings

    settings = replace(
        test_settings(router=router.grpc_address, fallback_catalog=str(stack.catalog_path)),
        environ={key_env("beta"): key_value("beta")},  # alpha's variable is unset
    )
    sc = stack.sidecar = SidecarApp(settings)
    await sc.start()
    root = sc.base_url.removesuffix("/v1")
    status, ready = await _get(root + "/readyz")
    assert status == 200 and ready["ready"] is True
    assert ready["providers_without_key"] == [
        {"provider": "alpha", "api_key_env": key_env("alpha")}
    ]
    assert sc.metrics.providers_without_key._value.get() == 1
    client = openai_client(sc)
    for _ in range(3):
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MSGS, max_tokens=3, extra_body={"provider": {"order": ["alpha"]}}
        )
        assert raw.headers["x-router-provider"] == "beta"
        assert raw.headers["x-router-attempts"] == "1"  # the keyless one is no attempt
    assert raw.parse().model_extra["routing"]["skipped"] == [
        {"provider": "alpha", "reason": "api_key_unset"}
    ]
    warnings = [r for r in caplog.records if "has no API key" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].provider == "alpha"
    assert stack.counts()["alpha"] == 0


async def test_a_model_with_no_keyed_provider_is_not_ready_and_503(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    from dataclasses import replace

    from sidecar_helpers import test_settings

    sc = stack.sidecar = SidecarApp(
        replace(test_settings(fallback_catalog=str(stack.catalog_path)), environ={})
    )
    await sc.start()
    status, ready = await _get(sc.base_url.removesuffix("/v1") + "/readyz")
    assert status == 503 and ready["models_without_key"] == [MODEL]
    with pytest.raises(openai.APIStatusError) as err:
        await openai_client(sc).chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3)
    assert err.value.status_code == 503
    assert "API key unset for: alpha" in err.value.message
    assert err.value.response.headers["x-should-retry"] == "false"  # same answer until keys change


async def test_models_figures_share_the_routers_names(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(router.grpc_address)
    await openai_client(sc).chat.completions.create(model=MODEL, messages=MSGS, max_tokens=3)
    _, sidecar_models = await _get(sc.base_url + "/models")
    _, router_models = await _get(router.http_url + "/v1/models")
    ours = sidecar_models["data"][0]["router"]
    theirs = router_models["data"][0] if "data" in router_models else router_models["models"][0]
    assert "best_p50_throughput" in ours and "best_p50_throughput" in theirs
    assert "best_p50_tokens_per_second" not in ours
    assert {"best_p50_ttft_ms", "best_p50_throughput"} <= ours.keys() & theirs.keys()


async def test_unknown_model_reads_the_same_from_router_and_fallback_catalog(
    stack: Stack,
) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    router = await stack.start_router()
    via_router = await stack.start_sidecar(router.grpc_address)
    with pytest.raises(openai.NotFoundError) as from_router:
        await openai_client(via_router).chat.completions.create(model="nobody/none", messages=MSGS)
    await via_router.stop()
    via_catalog = await stack.start_sidecar(fallback=True)
    with pytest.raises(openai.NotFoundError) as from_catalog:
        await openai_client(via_catalog).chat.completions.create(model="nobody/none", messages=MSGS)
    assert from_router.value.body == from_catalog.value.body
    assert from_router.value.body["message"] == 'model "nobody/none" is not in the catalog'
    # ... which is what the router itself says.
    async with grpc.aio.insecure_channel(router.grpc_address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as rpc:
            await router_pb2_grpc.RouterStub(ch).RankProviders(
                router_pb2.RankProvidersRequest(model="nobody/none"), timeout=2
            )
    assert rpc.value.details() == from_catalog.value.body["message"]


async def test_models_entries_have_one_shape_from_router_and_fallback_catalog(
    stack: Stack,
) -> None:
    """Found by an audit: from the catalog an entry had a top-level ``providers`` and no
    ``router`` object, so code reading ``router.best_p50_ttft_ms`` broke when the router
    was down."""
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(router.grpc_address)
    _, from_router = await _get(sc.base_url + "/models")
    await sc.stop()
    sc = await stack.start_sidecar(fallback=True)  # no router: the fallback catalog answers
    _, from_catalog = await _get(sc.base_url + "/models")
    ours, theirs = from_router["data"][0], from_catalog["data"][0]
    assert ours.keys() == theirs.keys() and ours["router"].keys() == theirs["router"].keys()
    assert theirs["router"] == {
        "endpoint_count": 2,
        "best_p50_ttft_ms": None,
        "best_p50_throughput": None,
        "providers": ["alpha", "beta"],
    }
    assert sorted(ours["router"]["providers"]) == ["alpha", "beta"]


async def test_routing_excluded_has_one_shape_from_router_and_fallback_catalog(
    stack: Stack,
) -> None:
    """Found by the README audit: from the fallback catalog ``routing.excluded`` held
    ``{"provider", "reason": "not_zdr"}`` (a bare code) and was written even when empty,
    while the router's is ``reason: {code, detail, numbers}`` and omitted when empty, as
    the README documents; code reading ``excluded[0].reason.code`` broke with the router
    down."""
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.write_catalog(zdr={"alpha": True})
    router = await stack.start_router()

    async def routing(sc: SidecarApp, provider: dict) -> dict:
        raw = await openai_client(sc).chat.completions.with_raw_response.create(
            model=MODEL, messages=MSGS, max_tokens=3, extra_body={"provider": provider}
        )
        return raw.parse().model_extra["routing"]

    sc = await stack.start_sidecar(router.grpc_address)
    router_zdr, router_plain = await routing(sc, {"zdr": True}), await routing(sc, {})
    await sc.stop()
    sc = await stack.start_sidecar(fallback=True)  # no router: the fallback catalog ranks
    catalog_zdr, catalog_plain = await routing(sc, {"zdr": True}), await routing(sc, {})
    assert (router_zdr["source"], catalog_zdr["source"]) == ("router", "catalog")
    assert (
        catalog_zdr["excluded"]
        == router_zdr["excluded"]
        == [
            {
                "provider": "beta",
                "reason": {
                    "code": "not_zdr",
                    "detail": "provider beta does not offer zero data retention",
                    "numbers": {"zero_data_retention": 0.0},
                },
            }
        ]
    )
    assert "excluded" not in router_plain and "excluded" not in catalog_plain


@pytest.mark.parametrize("source", ["router", "fallback_catalog"])
async def test_one_model_is_retrieved_as_the_openai_client_asks(stack: Stack, source: str) -> None:
    """Found by an audit: ``client.models.retrieve(id)`` (``GET /v1/models/{id}``, an id
    holding a slash) was a bare 404 ``Not Found`` for every model."""
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    if source == "router":
        router = await stack.start_router()
        sc = await stack.start_sidecar(router.grpc_address)
    else:
        sc = await stack.start_sidecar(fallback=True)
    client = openai_client(sc)
    listed = (await client.models.list()).data
    model = await client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    assert model.model_dump() == next(m for m in listed if m.id == MODEL).model_dump()
    with pytest.raises(openai.NotFoundError) as err:
        await client.models.retrieve("nobody/none")
    assert err.value.body == {
        "message": 'model "nobody/none" is not in the catalog',
        "type": "not_found_error",
        "param": "model",
        "code": "model_not_found",
    }


@pytest.mark.parametrize(
    ("provider", "status", "expected"),
    [
        ({"data_collection": "deny"}, 200, "forgetter"),
        ({"data_collection": "deny", "zdr": False}, 200, "forgetter"),
        ({"data_collection": "never"}, 400, "provider.data_collection"),
        ({"data_collection": "deny", "zdr": True}, 200, "forgetter"),
        ({"data_collection": "allow"}, 200, "keeper"),
    ],
)
async def test_openrouters_data_collection_deny_is_never_silently_dropped(
    stack: Stack, provider: dict, status: int, expected: str
) -> None:
    """OpenRouter apps send ``data_collection: "deny"`` to keep their prompts away from
    providers that store them; ignored like an unknown key, the prompt went to whichever
    provider ranked first, one that keeps data included. It is enforced as zero data
    retention (``expected``: the provider that serves, or the 400's ``param``)."""
    await stack.add_providers({"keeper": {}, "forgetter": {}})
    stack.write_catalog(zdr={"forgetter": True}, prices={"keeper": 0.1, "forgetter": 5.0})
    sc = await stack.start_sidecar(fallback=True)
    body = {"provider": {**provider, "sort": "price"}}
    client = openai_client(sc)
    if status == 400:
        with pytest.raises(openai.BadRequestError) as err:
            await client.chat.completions.create(
                model=MODEL, messages=MSGS, max_tokens=3, extra_body=body
            )
        assert err.value.param == expected and err.value.code == "invalid_request"
        assert "provider.data_collection" in err.value.message
        assert stack.counts() == {"keeper": 0, "forgetter": 0}
        return
    answer = await client.chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=3, extra_body=body
    )
    assert answer.model_extra["routing"]["provider"] == expected
