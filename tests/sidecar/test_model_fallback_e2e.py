"""Model fallbacks, per-provider first-token timeouts and the cost of each request, end to end.

A real router on loopback, the sidecar, fake providers and the official
``openai`` SDK (raw HTTP where the SDK cannot say it: a request without
``model``, a stream that ends with an error event).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from sidecar_helpers import Stack, key_env, openai_client, wait_for

from router_service.ranking import RankingConfig

PRIMARY = "zai/glm-4.7"
BACKUP = "acme/backup-1"
PROMPT = "x" * 40  # 40 characters: the fake counts ceil(40/4) + 3 = 13 prompt tokens
MSGS = [{"role": "user", "content": PROMPT}]
#: Deterministic order at the router: no exploration picks.
QUIET = RankingConfig(exploration_share=0.0, exploration_share_unknown=0.0)


def write_models_catalog(
    stack: Stack,
    models: dict[str, list[tuple[str, float, float]]],
    zdr: dict[str, bool] | None = None,
) -> Path:
    """A catalog of several models: ``{model: [(provider, input $/M, output $/M), ...]}``."""
    zdr = zdr or {}
    lines = ["providers:"]
    for name, fp in stack.providers.items():
        lines.append(
            f'  {name}: {{base_url: "{fp.base_url}", api_key_env: {key_env(name)}, '
            f"zero_data_retention: {str(zdr.get(name, False)).lower()}}}"
        )
    lines.append("models:")
    for model, endpoints in models.items():
        lines += [f"  {model}:", "    endpoints:"]
        for provider, price_in, price_out in endpoints:
            lines.append(
                f"      - {{provider: {provider}, upstream_model: up-{provider}, "
                f"input_price_per_million: {price_in}, output_price_per_million: {price_out}}}"
            )
    stack.catalog_path = stack.tmp / "catalog.yaml"
    stack.catalog_path.write_text("\n".join(lines) + "\n")
    return stack.catalog_path


async def _post(sc: Any, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    url = f"{sc.base_url}/chat/completions"
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
        return resp.status, dict(resp.headers), await resp.read()


# -- 1. model fallbacks ------------------------------------------------------------


async def _zdr_chain_stack(stack: Stack) -> Any:
    """PRIMARY: alpha, beta (ZDR, both failing). BACKUP: delta (cheap, keeps data), gamma
    and epsilon (ZDR)."""
    await stack.add_providers({n: {} for n in ("alpha", "beta", "gamma", "delta", "epsilon")})
    write_models_catalog(
        stack,
        {
            PRIMARY: [("alpha", 1.0, 1.0), ("beta", 1.0, 1.0)],
            BACKUP: [("delta", 0.1, 0.1), ("gamma", 1.0, 2.0), ("epsilon", 5.0, 5.0)],
        },
        zdr={"alpha": True, "beta": True, "gamma": True, "epsilon": True},
    )
    router = await stack.start_router(ranking=QUIET)
    stack.providers["alpha"].add_incident("fail", status=500)
    stack.providers["beta"].add_incident("fail", status=503)
    return await stack.start_sidecar(router.grpc_address)


@pytest.mark.parametrize("stream", [False, True])
async def test_primary_models_providers_all_fail_second_model_serves_with_zdr_held(
    stack: Stack, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar")
    sc = await _zdr_chain_stack(stack)
    client = openai_client(sc)
    extra = {"models": [BACKUP], "provider": {"zdr": True, "sort": "price"}}
    if stream:
        raw = await client.chat.completions.with_raw_response.create(
            model=PRIMARY, messages=MSGS, max_tokens=4, stream=True, extra_body=extra
        )
        text, routing, models = "", None, set()
        async for chunk in raw.parse():
            models.add(chunk.model)
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            routing = (chunk.model_extra or {}).get("routing") or routing
        assert text and models == {BACKUP}  # every chunk names the model that served
    else:
        raw = await client.chat.completions.with_raw_response.create(
            model=PRIMARY, messages=MSGS, max_tokens=4, extra_body=extra
        )
        answer = raw.parse()
        assert answer.model == BACKUP and answer.choices[0].message.content
        routing = answer.model_extra["routing"]
    assert raw.headers["x-router-model"] == BACKUP
    assert raw.headers["x-router-provider"] == "gamma"
    assert raw.headers["x-router-attempts"] == "3"
    assert routing is not None
    assert routing["model"] == BACKUP and routing["provider"] == "gamma"
    assert routing["models"] == [PRIMARY, BACKUP]
    got = [(a["model"], a["provider"], a["status"]) for a in routing["attempts"]]
    assert sorted(got[:2]) == [(PRIMARY, "alpha", "error"), (PRIMARY, "beta", "error")]
    assert got[2] == (BACKUP, "gamma", "ok")
    # ZDR held across models: delta (cheapest, keeps data) never saw the request.
    assert stack.counts()["delta"] == 0
    assert routing["fallbacks_available"] == [{"model": BACKUP, "provider": "epsilon"}]
    # The fake received the upstream id of the backup model's endpoint.
    assert stack.providers["gamma"].requests[-1].model == "up-gamma"
    # The access line names the model that served, as the header does.
    access = [r for r in caplog.records if r.name == "sidecar" and r.getMessage() == "request"]
    assert [(r.model, r.provider) for r in access] == [(BACKUP, "gamma")]  # type: ignore[attr-defined]


async def test_models_alone_names_the_primary_and_a_model_with_no_eligible_provider_is_skipped(
    stack: Stack,
) -> None:
    await stack.add_providers({n: {} for n in ("alpha", "gamma")})
    write_models_catalog(
        stack,
        {PRIMARY: [("alpha", 1.0, 1.0)], BACKUP: [("gamma", 1.0, 1.0)]},
        zdr={"gamma": True},
    )
    router = await stack.start_router(ranking=QUIET)
    sc = await stack.start_sidecar(router.grpc_address)
    body = {
        "models": [PRIMARY, BACKUP],  # no `model`: the first is the primary
        "messages": MSGS,
        "max_tokens": 3,
        "providerOptions": {"gateway": {"zeroDataRetention": True}},
    }
    status, headers, data = await _post(sc, body)
    assert status == 200, data
    routing = json.loads(data)["routing"]
    assert headers["x-router-model"] == BACKUP
    assert routing["models"] == [PRIMARY, BACKUP]
    assert routing["models_skipped"] == [{"model": PRIMARY, "reason": "no_eligible_provider"}]
    assert [a["model"] for a in routing["attempts"]] == [BACKUP]
    assert stack.counts()["alpha"] == 0


async def test_model_fallback_stays_within_the_attempt_limit_and_reserves_the_backup_a_try(
    stack: Stack,
) -> None:
    await stack.add_providers({n: {} for n in ("alpha", "beta", "delta", "gamma")})
    write_models_catalog(
        stack,
        {
            PRIMARY: [("alpha", 1.0, 1.0), ("beta", 1.0, 1.0), ("delta", 1.0, 1.0)],
            BACKUP: [("gamma", 1.0, 1.0)],
        },
    )
    router = await stack.start_router(ranking=QUIET)
    for name in ("alpha", "beta", "delta"):
        stack.providers[name].add_incident("fail", status=500)
    sc = await stack.start_sidecar(router.grpc_address, max_attempts=3)
    client = openai_client(sc)
    answer = await client.chat.completions.create(
        model=PRIMARY,
        messages=MSGS,
        max_tokens=3,
        extra_body={"models": [BACKUP], "provider": {"order": ["alpha", "beta", "delta"]}},
    )
    routing = answer.model_extra["routing"]
    # Three attempts in all: the primary's two best, then the backup's best.
    assert [(a["model"], a["provider"]) for a in routing["attempts"]] == [
        (PRIMARY, "alpha"),
        (PRIMARY, "beta"),
        (BACKUP, "gamma"),
    ]
    assert stack.counts()["delta"] == 0
    # delta was eligible but never tried: it could have been a fallback.
    assert routing["fallbacks_available"] == [{"model": PRIMARY, "provider": "delta"}]


# -- 2. per-provider first-token timeouts -------------------------------------------


async def _timeout_stack(stack: Stack, **sidecar: Any) -> Any:
    await stack.add_providers({"alpha": {}, "beta": {}})
    write_models_catalog(stack, {PRIMARY: [("alpha", 1.0, 1.0), ("beta", 1.0, 1.0)]})
    router = await stack.start_router(ranking=QUIET)
    stack.providers["alpha"].add_incident("hang")
    # The sidecar alone would wait 30 s for alpha's first token.
    sc = await stack.start_sidecar(
        router.grpc_address, first_byte_timeout_s=30.0, nonstream_timeout_s=30.0, **sidecar
    )
    return router, sc


@pytest.mark.parametrize("stream", [True, False])
async def test_provider_slower_than_its_provider_timeout_is_abandoned_and_the_next_serves(
    stack: Stack, stream: bool
) -> None:
    router, sc = await _timeout_stack(stack)
    client = openai_client(sc)
    gateway = {"order": ["alpha", "beta"], "providerTimeouts": {"byok": {"alpha": 200}}}
    raw = await client.chat.completions.with_raw_response.create(
        model=PRIMARY,
        messages=MSGS,
        max_tokens=3,
        stream=stream,
        extra_body={"providerOptions": {"gateway": gateway}},
    )
    if stream:
        routing = None
        async for chunk in raw.parse():
            routing = (chunk.model_extra or {}).get("routing") or routing
    else:
        routing = raw.parse().model_extra["routing"]
    assert raw.headers["x-router-provider"] == "beta"
    assert routing is not None
    first, second = routing["attempts"]
    assert first["provider"] == "alpha" and first["error_class"] == "timeout"
    assert "within 0.2s (providerTimeouts)" in first["error"]
    assert second["provider"] == "beta" and second["status"] == "ok"
    # Abandoned means closed: the hung handler sees its client go at once.
    hung = stack.providers["alpha"].requests[0]
    await wait_for(lambda: hung.duration_ms is not None, timeout=5)
    # The app's own short timeout is no evidence against alpha: the router hears of
    # beta's success only (alpha's attempt finished first, so it would be queued first).
    await wait_for(lambda: router.core.outcomes_by_class["none"] >= 1, timeout=5)
    assert router.core.outcomes_by_class["timeout"] == 0


async def test_the_sidecars_per_provider_default_abandons_and_is_reported(stack: Stack) -> None:
    router, sc = await _timeout_stack(stack, provider_first_token_timeouts="alpha=200")
    client = openai_client(sc)
    answer = await client.chat.completions.create(
        model=PRIMARY,
        messages=MSGS,
        max_tokens=3,
        extra_body={"provider": {"order": ["alpha", "beta"]}},
    )
    first, second = answer.model_extra["routing"]["attempts"]
    assert first["error_class"] == "timeout" and "providerTimeouts" not in first["error"]
    assert second["provider"] == "beta"
    # The operator's bound is the sidecar's own: a timeout under it counts against alpha.
    await wait_for(lambda: router.core.outcomes_by_class["timeout"] == 1, timeout=5)


# -- 3. cost -----------------------------------------------------------------------

#: alpha's prices, USD per million tokens, and what the fake counts for MSGS / max_tokens 5.
IN_PRICE, OUT_PRICE = 2.0, 8.0
PROMPT_TOKENS, OUTPUT_TOKENS = 13, 5
#: By hand: 13 x 2 / 1e6 + 5 x 8 / 1e6 = 0.000026 + 0.000040.
COST_IN, COST_OUT = 0.000026, 0.000040
COST = 0.000066


async def _cost_stack(stack: Stack) -> Any:
    await stack.add_providers({"alpha": {}})
    write_models_catalog(stack, {PRIMARY: [("alpha", IN_PRICE, OUT_PRICE)]})
    router = await stack.start_router(ranking=QUIET)
    return await stack.start_sidecar(router.grpc_address)


def _assert_cost(cost_usd: dict[str, Any], total: float, inp: float, out: float) -> None:
    assert cost_usd["total"] == pytest.approx(total, rel=1e-9)
    assert cost_usd["input"] == pytest.approx(inp, rel=1e-9)
    assert cost_usd["output"] == pytest.approx(out, rel=1e-9)


async def test_cost_is_usage_times_price_for_stream_and_non_stream(stack: Stack) -> None:
    sc = await _cost_stack(stack)
    client = openai_client(sc)
    # Non-streaming: usage.cost on the body, routing.cost_usd split.
    answer = await client.chat.completions.create(model=PRIMARY, messages=MSGS, max_tokens=5)
    assert answer.usage.prompt_tokens == PROMPT_TOKENS
    assert answer.usage.completion_tokens == OUTPUT_TOKENS
    assert answer.usage.model_extra["cost"] == pytest.approx(COST, rel=1e-9)
    routing = answer.model_extra["routing"]
    _assert_cost(routing["cost_usd"], COST, COST_IN, COST_OUT)
    assert routing["cost_usd"]["estimated"] is False
    assert routing["attempts"][0]["cost_usd"] == pytest.approx(COST, rel=1e-9)
    assert routing["attempts"][0]["input_tokens"] == PROMPT_TOKENS

    # Streaming with include_usage: usage.cost on the usage chunk.
    stream = await client.chat.completions.create(
        model=PRIMARY,
        messages=MSGS,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage, routing = None, None
    async for chunk in stream:
        usage = chunk.usage or usage
        routing = (chunk.model_extra or {}).get("routing") or routing
    assert usage is not None and usage.completion_tokens == OUTPUT_TOKENS
    assert usage.model_extra["cost"] == pytest.approx(COST, rel=1e-9)
    assert routing is not None
    _assert_cost(routing["cost_usd"], COST, COST_IN, COST_OUT)

    # Streaming without include_usage: no usage chunk for the app, the cost in routing.
    stream = await client.chat.completions.create(
        model=PRIMARY, messages=MSGS, max_tokens=5, stream=True
    )
    routing = None
    async for chunk in stream:
        assert chunk.usage is None
        routing = (chunk.model_extra or {}).get("routing") or routing
    assert routing is not None
    _assert_cost(routing["cost_usd"], COST, COST_IN, COST_OUT)
    assert routing["cost_usd"]["estimated"] is False  # the sidecar asked for usage itself

    # The spend counter: three answers, labels from the catalog.
    spent = sc.metrics.spend.labels(PRIMARY, "alpha")._value.get()
    assert spent == pytest.approx(3 * COST, rel=1e-9)
    metrics = (await _get(sc, "/metrics")).decode()
    assert f'router_sidecar_spend_usd_total{{model="{PRIMARY}",provider="alpha"}}' in metrics


async def _get(sc: Any, path: str) -> bytes:
    base = sc.base_url.removesuffix("/v1")
    async with aiohttp.ClientSession() as http, http.get(base + path) as resp:
        return await resp.read()


async def test_a_stream_that_breaks_after_tokens_is_costed_too(stack: Stack) -> None:
    sc = await _cost_stack(stack)
    stack.providers["alpha"].add_incident("drop", after_tokens=3)
    body = {"model": PRIMARY, "messages": MSGS, "max_tokens": 5, "stream": True}
    status, _, data = await _post(sc, body)
    assert status == 200
    events = [
        json.loads(line[6:]) for line in data.decode().splitlines() if line.startswith("data: {")
    ]
    routing = events[-1]["routing"]
    assert events[-1]["error"]["code"] == "stream_abort"
    (attempt,) = routing["attempts"]
    assert attempt["status"] == "error" and attempt["output_tokens"] == 3
    # No usage came: the input is the sidecar's estimate, (40 + 3) // 4 = 10 tokens,
    # the output the 3 content chunks counted: 10 x 2 / 1e6 + 3 x 8 / 1e6.
    _assert_cost(routing["cost_usd"], 0.000044, 0.000020, 0.000024)
    assert routing["cost_usd"]["estimated"] is True
    spent = sc.metrics.spend.labels(PRIMARY, "alpha")._value.get()
    assert spent == pytest.approx(0.000044, rel=1e-9)


# -- 4. fallbacks_available -----------------------------------------------------------


async def test_fallbacks_available_lists_the_eligible_providers_not_tried(stack: Stack) -> None:
    await stack.add_providers({n: {} for n in ("alpha", "beta", "gamma")})
    write_models_catalog(
        stack,
        {PRIMARY: [("alpha", 1.0, 1.0), ("beta", 1.0, 1.0), ("gamma", 1.0, 1.0)]},
        zdr={"alpha": True, "gamma": True},
    )
    router = await stack.start_router(ranking=QUIET)
    sc = await stack.start_sidecar(router.grpc_address)
    client = openai_client(sc)
    answer = await client.chat.completions.create(
        model=PRIMARY,
        messages=MSGS,
        max_tokens=3,
        extra_body={"provider": {"order": ["alpha", "beta", "gamma"], "zdr": True}},
    )
    routing = answer.model_extra["routing"]
    assert routing["provider"] == "alpha"
    # beta keeps data (not eligible); gamma could have served.
    assert routing["fallbacks_available"] == [{"model": PRIMARY, "provider": "gamma"}]
    assert "models" not in routing  # no chain was asked for


# -- 5. bad values: a 400 naming the field, nothing sent upstream ------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"models": "acme/backup-1"}, "models"),
        ({"models": []}, "models"),
        ({"models": [f"m/{i}" for i in range(9)]}, "models"),
        ({"models": [BACKUP, BACKUP]}, "models"),
        ({"models": [BACKUP, 7]}, "models"),
        ({"models": [BACKUP, "nobody/unknown-1", "nobody/unknown-2"]}, "models"),
        (
            {"models": [BACKUP], "providerOptions": {"gateway": {"models": [PRIMARY]}}},
            "models,providerOptions.gateway.models",
        ),
        (
            {"providerOptions": {"gateway": {"providerTimeouts": [1000]}}},
            "providerOptions.gateway.providerTimeouts",
        ),
        (
            {"providerOptions": {"gateway": {"providerTimeouts": {"byok": {"alpha": 0}}}}},
            "providerOptions.gateway.providerTimeouts.byok.alpha",
        ),
        (
            {"providerOptions": {"gateway": {"providerTimeouts": {"alpha": -5}}}},
            "providerOptions.gateway.providerTimeouts.alpha",
        ),
        (
            {"providerOptions": {"gateway": {"providerTimeouts": {"alpha": "fast"}}}},
            "providerOptions.gateway.providerTimeouts.alpha",
        ),
        (
            {"providerOptions": {"gateway": {"providerTimeouts": {"alpha": 1e12}}}},
            "providerOptions.gateway.providerTimeouts.alpha",
        ),
        (
            {
                "providerOptions": {
                    "gateway": {"providerTimeouts": {"alpha": 100, "byok": {"alpha": 200}}}
                }
            },
            "providerOptions.gateway.providerTimeouts.byok.alpha,"
            "providerOptions.gateway.providerTimeouts.alpha",
        ),
    ],
)
async def test_bad_models_and_provider_timeouts_are_a_400_naming_the_field(
    stack: Stack, extra: dict[str, Any], param: str
) -> None:
    await stack.add_providers({"alpha": {}, "gamma": {}})
    write_models_catalog(stack, {PRIMARY: [("alpha", 1.0, 1.0)], BACKUP: [("gamma", 1.0, 1.0)]})
    router = await stack.start_router(ranking=QUIET)
    sc = await stack.start_sidecar(router.grpc_address)
    client = openai_client(sc)
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model=PRIMARY, messages=MSGS, max_tokens=3, extra_body=extra
        )
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == param, error
    if "unknown-1" in json.dumps(extra):
        assert "nobody/unknown-1" in error["message"] and "nobody/unknown-2" in error["message"]
        assert error["code"] == "model_not_found"
    assert stack.counts() == {"alpha": 0, "gamma": 0}


# -- 6. the README documents every field the routing object carries ---------------------


def _documented_fields(heading: str) -> set[str]:
    """Backticked names in the first column of the tables under a README heading."""
    from tests.conftest import REPO_ROOT

    text = (REPO_ROOT / "README.md").read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            names.update(part.strip("` ") for part in first.split("/"))
    return names


async def test_readme_documents_every_routing_field(stack: Stack) -> None:
    sc = await _zdr_chain_stack(stack)
    client = openai_client(sc)
    answer = await client.chat.completions.create(
        model=PRIMARY,
        messages=MSGS,
        max_tokens=4,
        extra_body={"models": [BACKUP], "provider": {"zdr": True, "sort": "price"}},
    )
    routing = answer.model_extra["routing"]
    metadata = _documented_fields("### `RoutingMetadata` (router, gRPC)")
    sidecar = _documented_fields("### The sidecar's `routing` object (HTTP, JSON)")
    assert {"strategy", "execution_order", "exploration_share", "source", "cost_usd"} <= (
        metadata | sidecar
    )
    assert set(routing) <= metadata | sidecar, set(routing) - (metadata | sidecar)
    for attempt in routing["attempts"]:
        assert set(attempt) <= sidecar, set(attempt) - sidecar


async def test_no_model_fallback_after_the_first_token(stack: Stack) -> None:
    """Once a token reached the app, a break ends the stream: the backup model is not tried."""
    await stack.add_providers({"alpha": {}, "gamma": {}})
    write_models_catalog(stack, {PRIMARY: [("alpha", 1.0, 1.0)], BACKUP: [("gamma", 1.0, 1.0)]})
    router = await stack.start_router(ranking=QUIET)
    sc = await stack.start_sidecar(router.grpc_address)
    stack.providers["alpha"].add_incident("drop", after_tokens=2)
    body = {"model": PRIMARY, "models": [BACKUP], "messages": MSGS, "max_tokens": 6, "stream": True}
    status, headers, data = await _post(sc, body)
    assert status == 200 and headers["x-router-model"] == PRIMARY
    last = json.loads([ln for ln in data.decode().splitlines() if ln.startswith("data: {")][-1][6:])
    assert last["error"]["code"] == "stream_abort"
    assert [a["model"] for a in last["routing"]["attempts"]] == [PRIMARY]
    assert last["routing"]["fallbacks_available"] == [{"model": BACKUP, "provider": "gamma"}]
    assert stack.counts()["gamma"] == 0
