"""Refusals a black-box audit found depending on the ranking source, or written as Python.

* ``max_tokens`` above the router's bound (``MAX_TOKENS``) was a 400 naming
  ``max_output_tokens`` with ``param: provider`` when the router answered, and
  was sent to the provider when the router was down.
* "No endpoint passes the hard filters" read differently from the router and
  from the fallback catalog (which wrote the model as a Python repr).
* Messages about ``models``, ``provider.sort`` and ``providerTimeouts`` showed
  values as Python writes them (``'x'``, ``['cost', ...]``, ``700000.0``); the
  contract writes values as JSON does (``router_common/json_text.py``).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from sidecar_helpers import MODEL, Stack

from router_common.limits import MAX_TOKENS

MSGS = [{"role": "user", "content": "hi"}]


async def _refusal(sc, extra: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    payload = {"model": MODEL, "messages": MSGS, **extra}
    async with (
        aiohttp.ClientSession() as s,
        s.post(sc.base_url + "/chat/completions", json=payload) as r,
    ):
        return r.status, await r.json(content_type=None)


ALIKE = [
    # Found by a black-box audit: via the router a 400 invalid_routing_preferences
    # naming ``provider`` (the router's ``model`` bound), from the catalog a 404.
    (
        {"model": "a/" + "x" * 300},
        "model",
        "invalid_request",
        'model must be a model id of 1..256 characters, got "a/' + "x" * 62 + '"… (302 characters)',
    ),
    (
        {"max_tokens": MAX_TOKENS + 1},
        "max_tokens",
        "invalid_request",
        f"max_tokens must be at most {MAX_TOKENS}, got {MAX_TOKENS + 1}",
    ),
    (
        {"max_completion_tokens": 2 * MAX_TOKENS, "stream": True},
        "max_completion_tokens",
        "invalid_request",
        f"max_completion_tokens must be at most {MAX_TOKENS}, got {2 * MAX_TOKENS}",
    ),
    (
        {"provider": {"max_price": {"prompt": 0}}},
        "provider",
        "no_eligible_provider",
        f'no endpoint of "{MODEL}" satisfies the preferences '
        f'("alpha | {MODEL}": input_price_above_max; "beta | {MODEL}": input_price_above_max)',
    ),
    (
        {"provider": {"zdr": True}},
        "provider",
        "no_eligible_provider",
        f'no endpoint of "{MODEL}" satisfies the preferences '
        f'("alpha | {MODEL}": not_zdr; "beta | {MODEL}": not_zdr)',
    ),
]


@pytest.mark.parametrize(("extra", "param", "code", "message"), ALIKE)
async def test_request_refusals_read_the_same_from_every_ranking_source(
    stack: Stack, extra: dict[str, Any], param: str, code: str, message: str
) -> None:
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.write_catalog()
    router = await stack.start_router()
    answers = []
    sc = await stack.start_sidecar(router.grpc_address, fallback=True)
    answers.append(await _refusal(sc, extra))  # the router answers
    await stack.stop_router()
    answers.append(await _refusal(sc, extra))  # the router is down: the fallback catalog
    for status, body in answers:
        assert status == 400
        assert body == answers[0][1]
    error = answers[0][1]["error"]
    assert (error["param"], error["code"], error["message"]) == (param, code, message)
    assert stack.counts() == {"alpha": 0, "beta": 0}  # refused before anything went upstream


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"models": ["nobody/a", "nobody/b"]},
            'unknown models (not in the catalog): "nobody/a", "nobody/b"',
        ),
        ({"models": [5]}, "models entries must be model ids of 1..256 characters, got 5"),
        # Found by the JavaScript audit: these three said what was wrong but not with what.
        ({"models": [MODEL, "b/y", MODEL]}, f'models lists "{MODEL}" more than once'),
        ({"stream": "true"}, 'stream must be a boolean, got "true"'),
        ({"max_tokens": -1}, "max_tokens must be a non-negative integer, got -1"),
        # ... and this one went to the provider, which knows no such field.
        ({"route": 5}, 'route must be "fallback" (OpenRouter\'s older switch for models), got 5'),
        (
            {"provider": {"sort": "fastest"}},
            "provider.sort must be one of "
            '["cost", "latency", "price", "throughput", "tps", "ttft"], got "fastest"',
        ),
        (
            {"providerOptions": {"gateway": {"providerTimeouts": {"alpha": 700000.0}}}},
            "providerOptions.gateway.providerTimeouts.alpha must be between 1 and 600000 "
            "milliseconds, got 700000",
        ),
        (
            {"provider": {"preferred_max_latency": {"p42": 1}}},
            "provider.preferred_max_latency must be a number or one of "
            '{p50|p75|p90|p95|p99: x}, got {"p42": 1}',
        ),
    ],
)
async def test_values_in_refusals_are_written_as_json(
    stack: Stack, extra: dict[str, Any], message: str
) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(router.grpc_address)
    status, body = await _refusal(sc, extra)
    assert status == 400, json.dumps(body)
    assert body["error"]["message"] == message


VERCEL = [
    ({"only": ["ghost"]}, "providerOptions.gateway.only", 'provider "ghost" is not in the catalog'),
    (
        {"order": [f"p{i}" for i in range(100)]},
        "providerOptions.gateway.order",
        "at most 64 providers, got 100",
    ),
    ({"order": ["alpha", "alpha"]}, "providerOptions.gateway.order", "more than once"),
]


@pytest.mark.parametrize(("gateway", "param", "needle"), VERCEL)
async def test_a_refused_vercel_option_is_named_as_the_request_wrote_it(
    stack: Stack, gateway: dict[str, Any], param: str, needle: str
) -> None:
    """Found by an audit: ``param`` said ``provider.only`` for a request that had only
    ``providerOptions.gateway.only``. Same answer from the router and the catalog."""
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.write_catalog()
    router = await stack.start_router()
    extra = {"providerOptions": {"gateway": gateway}}
    sc = await stack.start_sidecar(router.grpc_address, fallback=True)
    answers = [await _refusal(sc, extra)]
    await stack.stop_router()
    answers.append(await _refusal(sc, extra))
    for status, body in answers:
        assert status == 400 and body == answers[0][1]
    error = answers[0][1]["error"]
    assert error["param"] == param and needle in error["message"]
    assert error["code"] == "invalid_routing_preferences"
    # Given in both forms alike, the OpenRouter name is the one shown.
    status, body = await _refusal(sc, {**extra, "provider": gateway})
    assert status == 400 and body["error"]["param"] == param.replace(
        "providerOptions.gateway.", "provider."
    )
