"""The pure parts of model fallbacks, per-provider timeouts and cost (no sockets)."""

from __future__ import annotations

import dataclasses
from typing import Any

import openai
import pytest
from sidecar_helpers import MODEL, Stack, key_env, openai_client

from router_common.limits import MAX_FIRST_TOKEN_TIMEOUT_MS, MAX_MODELS_PER_REQUEST
from router_common.routing.cost import usage_cost
from sidecar.config import SidecarSettings, settings_from_args
from sidecar.model_fallback import Leg, allot
from sidecar.preferences import ParsedRequest, RequestError, parse_request
from sidecar.ranking_client import Ranking, Route
from sidecar.spend import request_cost
from sidecar.timeouts import first_token_timeout, parse_provider_timeouts, response_timeout
from sidecar.upstream import AttemptRecord

MSGS = [{"role": "user", "content": "hi"}]


def _route(name: str, suggested: float | None = None) -> Route:
    return Route(name, "http://127.0.0.1:1/v1", "", False, name, first_token_timeout_s=suggested)


def _leg(model: str, *providers: str) -> Leg:
    req = parse_request({"model": model, "messages": MSGS})
    routes = [_route(p) for p in providers]
    return Leg(req, Ranking(tuple(routes), "router"), routes, [])


def _picked(attempts: list[tuple[Leg, Route]]) -> list[tuple[str, str]]:
    return [(leg.req.model, route.provider) for leg, route in attempts]


def test_allot_keeps_one_attempt_per_fallback_model_and_gives_the_primary_the_rest() -> None:
    a, b = _leg("m/a", "p1", "p2", "p3"), _leg("m/b", "q1", "q2")
    assert _picked(allot([a, b], 3)) == [("m/a", "p1"), ("m/a", "p2"), ("m/b", "q1")]
    a, b = _leg("m/a", "p1", "p2", "p3"), _leg("m/b", "q1", "q2")
    assert _picked(allot([a, b], 10)) == [
        ("m/a", "p1"),
        ("m/a", "p2"),
        ("m/a", "p3"),
        ("m/b", "q1"),
        ("m/b", "q2"),
    ]
    a, b = _leg("m/a", "p1"), _leg("m/b", "q1", "q2")
    assert _picked(allot([a, b], 3)) == [("m/a", "p1"), ("m/b", "q1"), ("m/b", "q2")]
    # More models than attempts: the first max_attempts models' best providers.
    legs = [_leg(f"m/{i}", "p") for i in range(4)]
    assert _picked(allot(legs, 2)) == [("m/0", "p"), ("m/1", "p")]
    # One model: as before model fallbacks, min(routes, max_attempts).
    assert len(allot([_leg("m/a", "p1", "p2", "p3", "p4")], 3)) == 3


def test_models_option_chain_and_bounds() -> None:
    body: dict[str, Any] = {"messages": MSGS}
    req = parse_request({**body, "models": ["a/x", "b/y"]})
    assert req.model == "a/x" and req.models == ("a/x", "b/y")
    req = parse_request({**body, "model": "a/x", "models": ["a/x", "b/y"]})
    assert req.models == ("a/x", "b/y")  # the primary repeated in models counts once
    req = parse_request({**body, "model": "c/z", "models": ["a/x", "b/y"]})
    assert req.models == ("c/z", "a/x", "b/y")
    vercel = {**body, "model": "a/x", "providerOptions": {"gateway": {"models": ["b/y"]}}}
    assert parse_request(vercel).models == ("a/x", "b/y")
    assert "models" not in parse_request({**body, "model": "a/x", "models": ["b/y"]}).body
    routed = parse_request({**body, "model": "a/x", "models": ["b/y"], "route": "fallback"})
    assert "route" not in routed.body and routed.models == ("a/x", "b/y")
    assert "route" not in parse_request({**body, "model": "a/x", "route": None}).body
    assert parse_request({**body, "model": "a/x", "models": ["a/x"]}).models == ()
    # The chain shares the primary's preferences; each leg has its own cache key.
    leg = req.for_model("b/y")
    assert leg.model == "b/y" and leg.cache_key == ("b/y", req.cache_key[1])
    full = parse_request(
        {
            **body,
            "model": "a/x",
            "models": ["b/y"],
            "stream": True,
            "provider": {"hedge": True, "zdr": True},
            "providerOptions": {"gateway": {"providerTimeouts": {"p": 100}}},
        }
    )
    leg = full.for_model("b/y")
    for f in dataclasses.fields(ParsedRequest):  # every other field carried over
        if f.name not in ("model", "cache_key"):
            assert getattr(leg, f.name) == getattr(full, f.name), f.name
    eight = [f"m/{i}" for i in range(MAX_MODELS_PER_REQUEST)]
    assert len(parse_request({**body, "models": eight}).models) == MAX_MODELS_PER_REQUEST
    with pytest.raises(RequestError, match="9 distinct models") as info:
        parse_request({**body, "model": "other/one", "models": eight})
    assert info.value.param == "models"
    with pytest.raises(RequestError, match="you must provide a model") as info:
        parse_request(body)
    assert info.value.param == "model"


def test_provider_timeouts_option_forms() -> None:
    def timeouts(block: Any) -> Any:
        body = {"model": MODEL, "messages": MSGS}
        body["providerOptions"] = {"gateway": {"providerTimeouts": block}}
        return parse_request(body).provider_timeouts

    assert timeouts({"byok": {"groq": 1500}}) == {"groq": 1.5}
    assert timeouts({"groq": 1500, "cerebras": 250.5}) == {"groq": 1.5, "cerebras": 0.2505}
    assert timeouts({"groq": 1500, "byok": {"groq": 1500}}) == {"groq": 1.5}  # agreeing
    assert timeouts({"byok": {}}) == {}
    assert parse_request({"model": MODEL, "messages": MSGS}).provider_timeouts is None
    with pytest.raises(RequestError, match="more than 64 providers"):
        timeouts({"byok": {f"p{i}": 100 for i in range(10_000)}})
    with pytest.raises(RequestError, match="between 1 and 600000 milliseconds"):
        timeouts({"groq": MAX_FIRST_TOKEN_TIMEOUT_MS + 1})
    with pytest.raises(RequestError, match="must be a number"):
        timeouts({"groq": True})
    # Not a routing preference: the ranking cache key ignores it.
    plain = parse_request({"model": MODEL, "messages": MSGS, "providerOptions": {"gateway": {}}})
    body = {"model": MODEL, "messages": MSGS}
    body["providerOptions"] = {"gateway": {"providerTimeouts": {"groq": 100}}}
    assert parse_request(body).cache_key == plain.cache_key


def test_which_first_token_timeout_applies() -> None:
    s = SidecarSettings(first_byte_timeout_s=30.0)
    suggested = _route("groq", suggested=1.5)
    # The router's suggestion, below the ceiling (issue 16's rule, unchanged).
    assert first_token_timeout(s, suggested) == (1.5, False)
    # The request's value wins over the suggestion, either way...
    assert first_token_timeout(s, suggested, {"groq": 5.0}) == (5.0, False)
    assert first_token_timeout(s, suggested, {"groq": 0.2}) == (0.2, True)
    # ... but never beyond the operator's ceiling.
    assert first_token_timeout(s, _route("groq"), {"groq": 90.0}) == (30.0, False)
    # The per-provider default replaces the global ceiling for that provider only.
    per = {"groq": 60.0}
    assert first_token_timeout(s, _route("groq"), None, per) == (60.0, False)
    assert first_token_timeout(s, _route("groq"), {"groq": 90.0}, per) == (60.0, False)
    assert first_token_timeout(s, _route("other"), None, per) == (30.0, False)
    assert first_token_timeout(s, _route("other"), {"groq": 0.1}, per) == (30.0, False)
    # Non-streaming: only the per-provider values, capped by the whole-answer bound.
    ns = SidecarSettings(nonstream_timeout_s=60.0)
    assert response_timeout(ns, _route("groq")) is None
    assert response_timeout(ns, _route("groq"), {"groq": 2.0}) == (2.0, True)
    assert response_timeout(ns, _route("groq"), None, {"groq": 3.0}) == (3.0, False)
    assert response_timeout(ns, _route("groq"), {"groq": 9.0}, {"groq": 3.0}) == (3.0, False)


def test_provider_timeouts_flag() -> None:
    assert parse_provider_timeouts("") == {}
    assert parse_provider_timeouts("groq=2000, cerebras=500") == {"groq": 2.0, "cerebras": 0.5}
    for bad, match in (
        ("groq", "NAME=MILLISECONDS"),
        ("groq=fast", "not a number"),
        ("groq=0", "outside"),
        ("groq=1,groq=2", "twice"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_provider_timeouts(bad)
    with pytest.raises(SystemExit, match="provider-first-token-timeouts"):
        settings_from_args(["--provider-first-token-timeouts", "groq=-1"], environ={})
    ok = settings_from_args(["--provider-first-token-timeouts", "groq=2000"], environ={})
    assert ok.provider_first_token_timeouts == "groq=2000"


def test_cost_rule_and_request_total() -> None:
    cost = usage_cost(1_000, 500, 3.0, 15.0)  # 1000 x 3 / 1e6 + 500 x 15 / 1e6
    assert cost.input == pytest.approx(0.003) and cost.output == pytest.approx(0.0075)
    assert cost.total == pytest.approx(0.0105)
    assert usage_cost(0, 0, 3.0, 15.0).total == 0.0  # no tokens: nothing, never a blend
    a = AttemptRecord("p", "u", 0.0)
    a.cost = usage_cost(1_000, 0, 3.0, 15.0)
    b = AttemptRecord("q", "u", 0.0)
    b.cost, b.cost_estimated = usage_cost(0, 100, 1.0, 10.0), True
    total = request_cost([a, b, AttemptRecord("r", "u", 0.0)])
    assert total == {"total": 0.004, "input": 0.003, "output": 0.001, "estimated": True}


async def test_model_fallback_from_the_fallback_catalog_when_no_router(stack: Stack) -> None:
    """The chain works the same when the ranking comes from the sidecar's fallback catalog."""
    await stack.add_providers({"alpha": {}, "gamma": {}})
    path = stack.tmp / "catalog.yaml"
    lines = ["providers:"]
    for name, fp in stack.providers.items():
        lines.append(f'  {name}: {{base_url: "{fp.base_url}", api_key_env: {key_env(name)}}}')
    lines += [
        "models:",
        f"  {MODEL}:",
        "    endpoints:",
        "      - {provider: alpha, upstream_model: up-a, input_price_per_million: 1, "
        "output_price_per_million: 1}",
        "  acme/backup-1:",
        "    endpoints:",
        "      - {provider: gamma, upstream_model: up-g, input_price_per_million: 1, "
        "output_price_per_million: 1}",
    ]
    path.write_text("\n".join(lines) + "\n")
    stack.catalog_path = path
    stack.providers["alpha"].add_incident("fail", status=500)
    sc = await stack.start_sidecar("", fallback=True)
    client = openai_client(sc)
    answer = await client.chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=2, extra_body={"models": ["acme/backup-1"]}
    )
    routing = answer.model_extra["routing"]
    assert answer.model == "acme/backup-1" and routing["source"] == "catalog"
    assert [(a["model"], a["provider"]) for a in routing["attempts"]] == [
        (MODEL, "alpha"),
        ("acme/backup-1", "gamma"),
    ]
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model=MODEL, messages=MSGS, max_tokens=2, extra_body={"models": ["no/such-model"]}
        )
    assert info.value.body["param"] == "models" and "no/such-model" in info.value.body["message"]
