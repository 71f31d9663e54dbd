"""Keys in stream errors, pre-token aborts, abandoned upstreams (issue 9, items 1-3, 8).

Real router, real sidecar, fake providers that misbehave like real ones: an
SSE error event quoting the key, a role-only chunk then a dropped socket, a
clean end with no finish_reason, an app that leaves before or during a stream.
"""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from sidecar_helpers import (
    MODEL,
    Stack,
    key_value,
    stream_alpha_then_beta,
    wait_for,
)

MSGS = [{"role": "user", "content": "hello there"}]


def _key_fragments(name: str) -> list[bytes]:
    """The whole key and both halves: none of them may leave the sidecar."""
    raw = key_value(name).encode()
    half = len(raw) // 2
    return [raw, raw[:half], raw[half:]]


async def _raw_stream(sc, **body) -> tuple[int, bytes]:
    """Every byte the app receives for one streamed request."""
    payload = {"model": MODEL, "messages": MSGS, "max_tokens": 6, "stream": True, **body}
    url = sc.base_url + "/chat/completions"
    async with aiohttp.ClientSession() as s, s.post(url, json=payload) as r:
        return r.status, await r.read()


def _assert_no_key(data: bytes | str, name: str = "alpha") -> None:
    blob = data.encode() if isinstance(data, str) else data
    for frag in _key_fragments(name):
        assert frag not in blob


async def test_key_in_an_error_event_before_the_first_token_never_reaches_anyone(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.providers["alpha"].add_incident("error_event", after_tokens=0)
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(router.grpc_address)
    status, data = await _raw_stream(sc, provider={"order": ["alpha", "beta"]})
    assert status == 200
    # The fake really did put the key in its error event ...
    assert stack.providers["alpha"].requests[-1].outcome == "error_event"
    # ... and the app got beta's answer, with alpha's error shown without the key.
    _assert_no_key(data)
    assert b"[REDACTED]" in data and b"upstream error event" in data
    last = [ln for ln in data.split(b"\n") if ln.startswith(b"data: {")][-1]
    routing = json.loads(last[6:])["routing"]
    assert routing["provider"] == "beta"
    assert routing["attempts"][0]["error_class"] == "server_error"
    # Logs and metrics carry no key either.
    _assert_no_key("\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records))
    _assert_no_key(await _metric(sc, ""))


async def test_key_in_an_error_event_after_the_first_token_is_redacted(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # Paced, so the tokens reach the app before the error event does.
    await stack.add_providers({"alpha": {"tokens_per_second": 40.0}, "beta": {}})
    stack.providers["alpha"].add_incident("error_event", after_tokens=2)
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(router.grpc_address)
    status, data = await _raw_stream(sc, provider={"order": ["alpha", "beta"]})
    assert status == 200
    _assert_no_key(data)
    # Two tokens reached the app; then the sidecar's own (redacted) error event, once.
    assert data.count(b'"content":') >= 2
    events = [json.loads(ln[6:]) for ln in data.split(b"\n") if ln.startswith(b"data: {")]
    errors = [e for e in events if "error" in e]
    assert len(errors) == 1 and "[REDACTED]" in errors[0]["error"]["message"]
    assert errors[0]["routing"]["attempts"][0]["error_class"] == "stream_abort"
    assert data.endswith(b"data: [DONE]\n\n")
    assert stack.counts()["beta"] == 0  # no silent retry after the first token
    _assert_no_key("\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records))


async def test_key_in_a_non_streaming_error_body_is_redacted(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}})
    stack.providers["alpha"].add_incident("error_event")  # 200 + {"error": ... key ...}
    stack.write_catalog()
    sc = await stack.start_sidecar(fallback=True)
    async with (
        aiohttp.ClientSession() as s,
        s.post(sc.base_url + "/chat/completions", json={"model": MODEL, "messages": MSGS}) as r,
    ):
        data = await r.read()
    assert r.status == 502
    _assert_no_key(data)


@pytest.mark.parametrize(
    "fault", [("role_drop", {}), ("truncate", {"after_tokens": 0})], ids=["drop", "clean-end"]
)
async def test_a_stream_that_breaks_before_its_first_token_falls_back(
    stack: Stack, fault: tuple[str, dict]
) -> None:
    kind, kw = fault
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.providers["alpha"].add_incident(kind, **kw)
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(router.grpc_address)
    text, routing, headers = await stream_alpha_then_beta(sc, max_tokens=4, messages=MSGS)
    assert headers["x-router-provider"] == "beta"
    assert headers["x-router-attempts"] == "2"
    assert text and routing is not None
    assert [a["error_class"] for a in routing["attempts"]] == ["stream_abort", "none"]
    assert stack.providers["alpha"].requests[-1].outcome in ("dropped", "truncate")


async def _metric(sc, name: str) -> str:
    url = sc.base_url.removesuffix("/v1") + "/metrics"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        text = await r.text()
    return "\n".join(ln for ln in text.splitlines() if ln.startswith(name))


async def _leave_after(sc, wait_until, body: dict) -> None:
    """Start a request and drop the connection once ``wait_until()`` holds."""
    payload = {"model": MODEL, "messages": MSGS, "stream": True, **body}
    session = aiohttp.ClientSession()
    try:
        task = asyncio.create_task(session.post(sc.base_url + "/chat/completions", json=payload))
        await wait_for(wait_until, timeout=5)
        if task.done():
            (await task).close()
        else:
            task.cancel()
    finally:
        await session.close()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_app_leaving_before_the_first_token_closes_the_upstream(
    stack: Stack, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    caplog.set_level(logging.INFO)
    await stack.add_providers({"alpha": {"ttft_median_ms": 20_000.0}})
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(
        router.grpc_address, first_byte_timeout_s=30.0, nonstream_timeout_s=30.0
    )
    fake = stack.providers["alpha"]
    await _leave_after(sc, lambda: len(fake.requests) == 1, {"max_tokens": 40, "stream": stream})
    # The provider sees its connection closed (not ~20 s later, when it would answer).
    await wait_for(lambda: fake.requests[-1].outcome == "client_disconnected", timeout=3)
    assert fake.requests[-1].tokens == 0
    # Counted as the app's doing: 499, a client_error attempt, never a 500.
    await wait_for(lambda: sc.metrics.requests.labels("499")._value.get() == 1, timeout=3)
    assert sc.metrics.requests.labels("500")._value.get() == 0
    assert 'error_class="client_error",provider="alpha"} 1.0' in await _metric(
        sc, "router_sidecar_attempts_total"
    )
    logged = [r for r in caplog.records if r.name == "sidecar" and r.getMessage() == "request"]
    assert logged and logged[-1].status == 499
    # The router hears of it as the client's doing, which never hurts the provider.
    await wait_for(lambda: router.core.outcomes_by_class["client_error"] == 1, timeout=5)
    assert sum(router.core.outcomes_by_class.values()) == 1
    assert sc.ranking.cooldowns.cooling(MODEL, "alpha") is False


async def test_app_leaving_mid_stream_closes_the_upstream(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await stack.add_providers({"alpha": {"tokens_per_second": 20.0}})
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(router.grpc_address, chunk_timeout_s=30.0)
    fake = stack.providers["alpha"]
    await _leave_after(
        sc, lambda: fake.requests and fake.requests[-1].tokens >= 3, {"max_tokens": 200}
    )
    await wait_for(lambda: fake.requests[-1].outcome == "client_disconnected", timeout=3)
    assert fake.requests[-1].tokens < 200
    await wait_for(lambda: sc.metrics.requests.labels("499")._value.get() == 1, timeout=3)
    assert sc.metrics.requests.labels("500")._value.get() == 0
    # The access line names who was serving (found by an audit: it said null).
    logged = [r for r in caplog.records if r.name == "sidecar" and r.getMessage() == "request"]
    assert [(r.status, r.provider, r.model) for r in logged] == [(499, "alpha", MODEL)]
