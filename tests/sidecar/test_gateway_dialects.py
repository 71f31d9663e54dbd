"""The routing options OpenRouter and Vercel AI Gateway document, sent as their users send them.

Found by an audit of the sidecar against the two gateways' public documentation
(OpenRouter's "Provider Routing" and model variants pages, Vercel's provider
options, filtering and compliance pages): apps migrating from either send
exactly what those pages show. Each test runs a real router over fake
providers on loopback: ``cheap`` (keeps data, the cheapest), ``mid`` and
``private`` (zero data retention, the dearest).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import pytest
from sidecar_helpers import MODEL, Stack

from sidecar.app import SidecarApp

MSGS = [{"role": "user", "content": "hello there"}]


async def _stack(stack: Stack) -> SidecarApp:
    await stack.add_providers({"cheap": {}, "mid": {}, "private": {}})
    stack.write_catalog(zdr={"private": True}, prices={"cheap": 1.0, "mid": 2.0, "private": 3.0})
    router = await stack.start_router()
    return await stack.start_sidecar(router.grpc_address)


async def _post(sc: SidecarApp, **body: Any) -> tuple[int, dict[str, Any]]:
    """One non-streaming chat completion with ``body`` merged in: status and JSON answer."""
    payload = {"model": MODEL, "messages": MSGS, "max_tokens": 3, **body}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sc.base_url}/chat/completions", json=payload) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("gateway", "served"),
    [
        ({"disallowPromptTraining": True, "sort": "cost"}, "private"),
        ({"disallowPromptTraining": True, "zeroDataRetention": False, "sort": "cost"}, "private"),
        ({"disallowPromptTraining": False, "sort": "cost"}, "cheap"),
    ],
)
async def test_vercels_disallow_prompt_training_is_enforced_not_dropped(
    stack: Stack, gateway: dict[str, Any], served: str
) -> None:
    """Vercel's ``disallowPromptTraining: true`` routes only to providers that do not
    train on prompts; ignored like an unknown key, the prompt went to the cheapest
    provider, one that keeps data. The catalog records zero data retention, which
    Vercel documents as implying no training, so it is enforced as that."""
    sc = await _stack(stack)
    status, answer = await _post(sc, providerOptions={"gateway": gateway})
    assert status == 200, answer
    assert answer["routing"]["provider"] == served
    assert stack.counts()[served] == 1 and sum(stack.counts().values()) == 1


@pytest.mark.parametrize(
    ("max_price", "served"),
    [
        ({"prompt": 1.5, "completion": 1.5}, "cheap"),
        # OpenRouter's SDKs type every max_price field as a decimal string.
        ({"prompt": "2.5", "completion": "2.5"}, "mid"),
        ({"prompt": "1e0"}, "cheap"),
    ],
)
async def test_openrouters_max_price_as_numbers_or_decimal_strings(
    stack: Stack, max_price: dict[str, Any], served: str
) -> None:
    """The caps hold in both spellings (the string form was a 400 ``must be a number``).
    ``order`` puts the dearest first, so the provider that serves is the dearest one
    the cap lets through."""
    sc = await _stack(stack)
    order = ["private", "mid", "cheap"]
    status, answer = await _post(sc, provider={"max_price": max_price, "order": order})
    assert status == 200, answer
    assert answer["routing"]["provider"] == served
    excluded = {e["provider"] for e in answer["routing"]["excluded"]}
    assert excluded == {"cheap", "mid", "private"} - {"cheap", served}


@pytest.mark.parametrize(
    ("max_price", "param", "message"),
    [
        (
            {"prompt": 5, "request": 0.001},
            "provider.max_price.request",
            "provider.max_price.request cannot be enforced: the catalog records token prices "
            "only, so max_price takes prompt and completion (USD per million tokens)",
        ),
        ({"image": 0}, "provider.max_price.image", None),
        ({"audio": "0.5"}, "provider.max_price.audio", None),
        ({"promt": 0.5}, "provider.max_price.promt", None),
        (
            {"prompt": True},
            "provider.max_price.prompt",
            "provider.max_price.prompt must be a number or a decimal string "
            "(USD per million tokens), got true",
        ),
        ({"prompt": "cheap"}, "provider.max_price.prompt", None),
        ({"prompt": "1e999"}, "provider.max_price.prompt", None),
        ({"completion": "-1"}, "provider.max_price.completion", None),
        (
            {"completion": -1.0},
            "provider.max_price.completion",
            "provider.max_price.completion must not be negative, got -1",
        ),
        ([1, 2], "provider.max_price", "provider.max_price must be an object, got [1, 2]"),
    ],
)
async def test_a_price_cap_the_catalog_cannot_enforce_is_a_400_not_dropped(
    stack: Stack, max_price: Any, param: str, message: str | None
) -> None:
    """OpenRouter's ``max_price`` also documents ``request`` (per request), ``image`` and
    ``audio``; the catalog has token prices only, so those caps (and misspelt keys) were
    dropped and the request went to the cheapest provider whatever it charges for them.
    Each is a 400 naming the field as the request wrote it; nothing goes upstream."""
    sc = await _stack(stack)
    status, answer = await _post(sc, provider={"max_price": max_price})
    assert status == 400, answer
    assert answer["error"]["param"] == param
    assert answer["error"]["message"].startswith(param)
    if message is not None:
        assert answer["error"]["message"] == message
    assert sum(stack.counts().values()) == 0


@pytest.mark.parametrize(
    ("body", "sort", "served"),
    [
        ({"model": f"{MODEL}:floor"}, "cost", "cheap"),
        ({"model": f"{MODEL}:nitro"}, "tps", None),
        ({"model": f"{MODEL}:nitro", "provider": {"sort": "throughput"}}, "tps", None),
        ({"model": f"{MODEL}:floor", "provider": {"sort": {"by": "price"}}}, "cost", "cheap"),
        ({"model": None, "models": [f"{MODEL}:floor"]}, "cost", "cheap"),
        (
            {
                "model": f"{MODEL}:floor",
                "providerOptions": {"gateway": {"zeroDataRetention": True}},
            },
            "cost",
            "private",
        ),
    ],
)
async def test_openrouters_nitro_and_floor_model_suffixes_set_the_sort(
    stack: Stack, body: dict[str, Any], sort: str, served: str | None
) -> None:
    """``model:nitro`` is OpenRouter's shortcut for ``provider.sort: "throughput"`` and
    ``model:floor`` for ``"price"``; kept in the id, both were a 404 ``model not in the
    catalog``. The answer names the catalog's model, without the suffix."""
    sc = await _stack(stack)
    status, answer = await _post(sc, **body)  # "model": None is sent as null: models only
    assert status == 200, answer
    assert answer["model"] == MODEL and answer["routing"]["model"] == MODEL
    assert answer["routing"]["preferences"]["sort"] == sort
    if served is not None:
        assert answer["routing"]["provider"] == served
    assert sum(stack.counts().values()) == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": f"{MODEL}:nitro", "provider": {"sort": "price"}}, "provider.sort,model"),
        (
            {"model": f"{MODEL}:floor", "providerOptions": {"gateway": {"sort": "ttft"}}},
            "providerOptions.gateway.sort,model",
        ),
        ({"model": f"{MODEL}:floor", "models": [f"{MODEL}:nitro"]}, "model,models"),
        # Found by the README audit: with `models` alone, its first entry was named
        # `model`, a field the request never sent (and a sort conflict "with model").
        ({"model": None, "models": [f"{MODEL}:nitro", f"{MODEL}:floor"]}, "models"),
        (
            {"model": None, "models": [f"{MODEL}:nitro"], "provider": {"sort": "price"}},
            "provider.sort,models",
        ),
        (
            {
                "model": None,
                "providerOptions": {"gateway": {"models": [f"{MODEL}:nitro", f"{MODEL}:floor"]}},
            },
            "providerOptions.gateway.models",
        ),
    ],
)
async def test_a_model_suffix_that_contradicts_the_sort_is_a_400_naming_both(
    stack: Stack, body: dict[str, Any], param: str
) -> None:
    sc = await _stack(stack)
    status, answer = await _post(sc, **body)
    assert status == 400, answer
    assert answer["error"]["param"] == param
    assert all(name in answer["error"]["message"] for name in param.split(",")), answer
    if body.get("model") is None:  # never a field the request did not send
        assert not answer["error"]["message"].startswith("model "), answer
    assert sum(stack.counts().values()) == 0


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ({"by": "price", "partition": "model"}, "cost"),
        ({"by": "price", "partition": "none"}, "cost"),
        ({"partition": "none"}, None),
        ({}, None),
    ],
)
async def test_openrouters_sort_object_by_and_partition_are_optional(
    stack: Stack, sort: dict[str, Any], expected: str | None
) -> None:
    """OpenRouter documents ``sort`` as a string or ``{by, partition}``, each optional;
    ``{partition: "none"}`` alone was a 400 ``provider.sort.by must be one of``. No
    ``by`` is no sort; ``partition`` is accepted (see the README: "none" is not
    honoured, the models keep their order)."""
    sc = await _stack(stack)
    status, answer = await _post(sc, provider={"sort": sort})
    assert status == 200, answer
    assert answer["routing"]["preferences"].get("sort") == expected
    if expected == "cost":
        assert answer["routing"]["provider"] == "cheap"


async def test_an_unknown_sort_partition_is_a_400_naming_it(stack: Stack) -> None:
    sc = await _stack(stack)
    status, answer = await _post(sc, provider={"sort": {"by": "price", "partition": "all"}})
    assert status == 400, answer
    assert answer["error"]["param"] == "provider.sort.partition"
    assert answer["error"]["message"] == (
        'provider.sort.partition must be one of ["model", "none"], got "all"'
    )
    assert sum(stack.counts().values()) == 0


TYPE_ERRORS = [
    ({"provider": "cheap"}, "provider", 'provider must be an object, got "cheap"'),
    (
        {"provider": {"order": "cheap"}},
        "provider.order",
        'provider.order must be a list of provider names, got "cheap"',
    ),
    (
        {"provider": {"only": ["cheap", 5]}},
        "provider.only",
        'provider.only must be a list of provider names, got ["cheap", 5]',
    ),
    (
        {"provider": {"allow_fallbacks": "no"}},
        "provider.allow_fallbacks",
        'provider.allow_fallbacks must be a boolean, got "no"',
    ),
    ({"provider": {"zdr": 1}}, "provider.zdr", "provider.zdr must be a boolean, got 1"),
    (
        {"provider": {"preferred_min_throughput": -5.0}},
        "provider.preferred_min_throughput",
        "provider.preferred_min_throughput must not be negative, got -5",
    ),
    (
        {"provider": {"preferred_max_latency": {"p90": "fast"}}},
        "provider.preferred_max_latency.p90",
        'provider.preferred_max_latency.p90 must be a number, got "fast"',
    ),
    (
        {"provider": {"preferred_max_latency": {"p50": 1, "p90": 3}}},
        "provider.preferred_max_latency",
        "provider.preferred_max_latency takes one percentile cutoff here (soft thresholds "
        'are judged at one percentile per request), got {"p50": 1, "p90": 3}',
    ),
    (
        {"providerOptions": []},
        "providerOptions",
        "providerOptions must be an object, got []",
    ),
    (
        {"providerOptions": {"gateway": {"order": {"cheap": 1}}}},
        "providerOptions.gateway.order",
        'providerOptions.gateway.order must be a list of provider names, got {"cheap": 1}',
    ),
    (
        {"providerOptions": {"gateway": {"only": [f"p{i}" for i in range(1000)] + [7]}}},
        "providerOptions.gateway.only",
        "providerOptions.gateway.only must be a list of provider names, got "
        '["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", …] (1001 entries)',
    ),
    (
        {"providerOptions": {"gateway": {"zeroDataRetention": "yes"}}},
        "providerOptions.gateway.zeroDataRetention",
        'providerOptions.gateway.zeroDataRetention must be a boolean, got "yes"',
    ),
    (
        {"providerOptions": {"gateway": {"disallowPromptTraining": [True]}}},
        "providerOptions.gateway.disallowPromptTraining",
        "providerOptions.gateway.disallowPromptTraining must be a boolean, got [true]",
    ),
    # These three said only what was expected (a JavaScript audit against the README).
    ({"models": "mid"}, "models", 'models must be a non-empty list of model ids, got "mid"'),
    (
        {"providerOptions": {"gateway": {"models": {}}}},
        "providerOptions.gateway.models",
        "providerOptions.gateway.models must be a non-empty list of model ids, got {}",
    ),
    (
        {"providerOptions": {"gateway": {"providerTimeouts": {"byok": {"cheap": "NaN"}}}}},
        "providerOptions.gateway.providerTimeouts.byok.cheap",
        "providerOptions.gateway.providerTimeouts.byok.cheap must be a number of milliseconds, "
        'got "NaN"',
    ),
    (
        {"providerOptions": {"gateway": {"providerTimeouts": [2000]}}},
        "providerOptions.gateway.providerTimeouts",
        "providerOptions.gateway.providerTimeouts must be an object of provider: milliseconds, "
        "got [2000]",
    ),
]


@pytest.mark.parametrize(("body", "param", "message"), TYPE_ERRORS)
async def test_type_errors_name_the_field_as_the_request_wrote_it_and_the_value_as_json(
    stack: Stack, body: dict[str, Any], param: str, message: str
) -> None:
    """A wrong type is a 400 whose ``param`` is the request's own spelling and whose
    message shows the value as JSON writes it (a list or object cut to its first
    entries); it said only ``must be a boolean``, so a client could not see which of
    its values was read. Nothing goes upstream."""
    sc = await _stack(stack)
    status, answer = await _post(sc, **body)
    assert status == 400, answer
    assert answer["error"]["param"] == param
    assert answer["error"]["message"] == message
    assert sum(stack.counts().values()) == 0


async def test_vercels_byok_credentials_are_accepted_and_never_forwarded_or_logged(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """Vercel apps may send per-request provider keys (``byok``); the sidecar calls
    providers with its own keys only, so they are ignored (README), and being secrets
    they must reach no provider, no answer and no log line."""
    caplog.set_level(logging.DEBUG)
    sc = await _stack(stack)
    secret = "sk-app-own-key-5f0e9a1c77d24b1e"
    gateway = {"byok": {"cheap": [{"apiKey": secret}]}, "sort": "cost"}
    status, answer = await _post(sc, providerOptions={"gateway": gateway})
    assert status == 200, answer
    assert answer["routing"]["provider"] == "cheap"
    (sent,) = stack.providers["cheap"].requests
    assert sent.auth_ok is True  # the sidecar's own key
    assert secret not in json.dumps(sent.body) and secret not in json.dumps(sent.headers)
    assert "providerOptions" not in sent.body
    assert secret not in json.dumps(answer)
    assert secret not in "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)


@pytest.mark.parametrize(
    ("provider", "at_p90"),
    [
        ({"preferred_max_latency": {"p50": None, "p90": 0.5, "p99": None}}, True),
        ({"preferred_min_throughput": {"p50": None, "p75": None}}, False),
        ({"preferred_min_throughput": {}}, False),
    ],
)
async def test_percentile_cutoffs_may_be_null_as_openrouters_sdks_write_them(
    stack: Stack, provider: dict[str, Any], at_p90: bool
) -> None:
    """OpenRouter documents each percentile cutoff as optional and nullable; an object
    whose other cutoffs are null was a 400 (``must be a number or one of``). Null
    cutoffs are no cutoffs; the one given is honoured (the router reports it)."""
    sc = await _stack(stack)
    status, answer = await _post(sc, provider=provider)
    assert status == 200, answer
    expected = "PERCENTILE_P90" if at_p90 else "PERCENTILE_P50"
    assert answer["routing"]["percentile"] == expected


@pytest.mark.parametrize("with_router", [True, False])
async def test_allow_fallbacks_false_still_tries_every_provider_named_in_order(
    stack: Stack, with_router: bool
) -> None:
    """OpenRouter documents ``allow_fallbacks: false`` as "use only the primary provider,
    or your custom providers in `order`". With ``order: [down, mid]`` the sidecar tried
    ``down`` alone and answered its 500; now ``mid`` serves, and ``cheap``, which the
    app did not list, is never tried. Same from the router and the fallback catalog."""
    await stack.add_providers({"cheap": {}, "mid": {}, "down": {"error_rate": 1.0}})
    stack.write_catalog(prices={"cheap": 1.0, "mid": 2.0, "down": 3.0})
    if with_router:
        router = await stack.start_router()
        sc = await stack.start_sidecar(router.grpc_address)
    else:
        sc = await stack.start_sidecar(fallback=True)
    provider = {"order": ["down", "mid"], "allow_fallbacks": False, "sort": "price"}
    status, answer = await _post(sc, provider=provider)
    assert status == 200, answer
    assert [a["provider"] for a in answer["routing"]["attempts"]] == ["down", "mid"]
    assert stack.counts() == {"cheap": 0, "mid": 1, "down": 1}
    # Without `order`, false keeps its meaning: the first provider only.
    status, answer = await _post(sc, provider={"allow_fallbacks": False, "sort": "price"})
    assert status == 200 and answer["routing"]["provider"] == "cheap"
    assert [a["provider"] for a in answer["routing"]["attempts"]] == ["cheap"]


#: Request bodies as ``@ai-sdk/openai-compatible`` 2.x wrote them (recorded by a
#: JavaScript audit through the SDK's ``fetch`` hook) for ``generateText`` with
#: ``maxOutputTokens: 3``. Nested: ``createOpenAICompatible({name: "sidecar"})`` and
#: ``providerOptions: {sidecar: {providerOptions: {gateway: {only: ["private"]}}}}``.
#: Flattened: ``{name: "gateway"}`` and ``{gateway: {only: [...], zeroDataRetention: true}}``.
_AI_SDK_NESTED = {
    "model": MODEL,
    "max_tokens": 3,
    "providerOptions": {"gateway": {"only": ["private"]}},
    "messages": MSGS,
}
_AI_SDK_FLATTENED = {
    "model": MODEL,
    "max_tokens": 3,
    "only": ["private"],
    "zeroDataRetention": True,
    "messages": MSGS,
}


async def test_the_bodies_vercels_ai_sdk_sends_are_routed_as_the_readme_says(stack: Stack) -> None:
    """The README's "From JavaScript" tells AI SDK users to put the sidecar's fields
    under the provider's own name, and warns that naming the provider ``gateway``
    spreads them at the top level: ``order``/``only`` there are unknown fields,
    forwarded untouched and not routed by, and a privacy option there is a 400 (it
    was forwarded too, so a request asking for zero data retention went to any
    provider). Pinned with the SDK's own bytes, so the advice stays true (a
    JavaScript audit found that ``providerOptions: {gateway: …}`` given to
    ``generateText`` never reaches the sidecar, which the README did not say)."""
    sc = await _stack(stack)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sc.base_url}/chat/completions", json=_AI_SDK_NESTED) as r:
            assert r.status == 200, await r.text()
            nested = await r.json()
        assert nested["routing"]["provider"] == "private"
        assert nested["routing"]["preferences"] == {"only": ["private"]}
        assert "providerOptions" not in stack.providers["private"].requests[-1].body
        served_before = {name: len(p.requests) for name, p in stack.providers.items()}
        async with session.post(f"{sc.base_url}/chat/completions", json=_AI_SDK_FLATTENED) as r:
            assert r.status == 400, await r.text()
            refused = (await r.json())["error"]
        assert refused["param"] == "zeroDataRetention"
        assert "providerOptions.gateway.zeroDataRetention" in refused["message"]
        assert {name: len(p.requests) for name, p in stack.providers.items()} == served_before
        only = {k: v for k, v in _AI_SDK_FLATTENED.items() if k != "zeroDataRetention"}
        async with session.post(f"{sc.base_url}/chat/completions", json=only) as r:
            assert r.status == 200, await r.text()
            flat = await r.json()
    assert flat["routing"]["preferences"] == {}
    served = flat["routing"]["provider"]
    forwarded = stack.providers[served].requests[-1].body
    assert forwarded["only"] == ["private"]
