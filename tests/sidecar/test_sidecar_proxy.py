"""The sidecar without a router (fallback catalog order): relay, fallback, errors, ZDR."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest
from sidecar_helpers import MODEL, Stack, key_value, openai_client

MSGS = [{"role": "user", "content": "hello there"}]


async def _setup(stack: Stack, zdr: dict[str, bool] | None = None, **cfgs: dict) -> None:
    await stack.add_providers({n: cfgs.get(n, {}) for n in ("alpha", "beta", "gamma")})
    stack.write_catalog(zdr=zdr or {})


async def _stream(client: openai.AsyncOpenAI, **kw: object) -> tuple[str, dict | None]:
    stream = await client.chat.completions.create(
        model=MODEL, messages=MSGS, stream=True, max_tokens=6, **kw
    )
    text, routing = "", None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if "routing" in (chunk.model_extra or {}):
            routing = chunk.model_extra["routing"]
    return text, routing


async def _stream_until_error(client: openai.AsyncOpenAI) -> tuple[str, openai.APIError]:
    """Stream until the sidecar ends the stream with an error event: (text seen, error)."""
    got = ""
    with pytest.raises(openai.APIError) as err:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MSGS, stream=True, max_tokens=10
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got += chunk.choices[0].delta.content
    return got, err.value


async def test_catalog_order_non_streaming(stack: Stack) -> None:
    await _setup(stack)
    sc = await stack.start_sidecar(fallback=True)
    raw = await openai_client(sc).chat.completions.with_raw_response.create(
        model=MODEL, messages=MSGS, max_tokens=4
    )
    assert raw.headers["x-router-provider"] == "alpha"
    body = raw.parse()
    assert body.model_extra["routing"]["source"] == "catalog"
    assert stack.counts() == {"alpha": 1, "beta": 0, "gamma": 0}


async def test_fallback_on_500_streaming_and_not(stack: Stack) -> None:
    await _setup(stack)
    stack.providers["alpha"].add_incident("fail", status=500)
    sc = await stack.start_sidecar(fallback=True)
    client = openai_client(sc)
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MSGS, max_tokens=4
    )
    assert raw.headers["x-router-provider"] == "beta"
    assert raw.headers["x-router-attempts"] == "2"
    attempts = raw.parse().model_extra["routing"]["attempts"]
    assert [(a["provider"], a["error_class"], a["http_status"]) for a in attempts] == [
        ("alpha", "server_error", 500),
        ("beta", "none", 200),
    ]
    # Streaming, and alpha is now in its local cooldown: beta first without trying alpha.
    text, routing = await _stream(client)
    assert text and routing["provider"] == "beta"
    assert [a["provider"] for a in routing["attempts"]] == ["beta"]
    assert stack.counts()["alpha"] == 1


async def test_fallback_on_timeout_and_refused(stack: Stack) -> None:
    await _setup(stack)
    stack.providers["alpha"].add_incident("hang")
    stack.providers["beta"].add_incident("refuse")
    sc = await stack.start_sidecar(fallback=True, first_byte_timeout_s=0.3, nonstream_timeout_s=0.3)
    text, routing = await _stream(openai_client(sc))
    assert text
    assert [(a["provider"], a["error_class"]) for a in routing["attempts"]] == [
        ("alpha", "timeout"),
        ("beta", "connect"),
        ("gamma", "none"),
    ]


async def test_connection_refused_port(stack: Stack) -> None:
    await _setup(stack)
    await stack.providers["alpha"].stop()  # nothing listens there any more
    sc = await stack.start_sidecar(fallback=True)
    text, routing = await _stream(openai_client(sc))
    assert text
    assert routing["attempts"][0]["error_class"] == "connect"
    assert routing["provider"] == "beta"


async def test_zdr_never_leaves_zdr_providers(stack: Stack) -> None:
    await _setup(stack, zdr={"beta": True})
    stack.providers["beta"].add_incident("fail", status=503)
    sc = await stack.start_sidecar(fallback=True)
    client = openai_client(sc)
    with pytest.raises(openai.APIStatusError) as err:
        await client.chat.completions.create(
            model=MODEL, messages=MSGS, max_tokens=4, extra_body={"provider": {"zdr": True}}
        )
    assert err.value.status_code == 502  # every provider tried failed (README: all failed)
    assert stack.counts() == {"alpha": 0, "beta": 1, "gamma": 0}
    routing = (
        err.value.body["routing"]
        if "routing" in err.value.body
        else (err.value.response.json()["routing"])
    )
    assert [a["provider"] for a in routing["attempts"]] == ["beta"]


async def test_no_retry_after_first_byte(stack: Stack) -> None:
    await _setup(stack)
    stack.providers["alpha"].add_incident("drop", after_tokens=2)
    sc = await stack.start_sidecar(fallback=True)
    got, err = await _stream_until_error(openai_client(sc))
    assert got  # the app saw tokens before the break
    assert "stream" in str(err.message)
    assert stack.counts() == {"alpha": 1, "beta": 0, "gamma": 0}


async def test_upstream_client_error_passed_on_without_key(stack: Stack) -> None:
    await _setup(stack)
    sc = await stack.start_sidecar(fallback=True)
    # Make alpha answer 400 echoing... the fake's own 400 for a bad max_tokens.
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            sc.base_url + "/chat/completions",
            json={"model": MODEL, "messages": MSGS, "max_tokens": 0},
        ) as r,
    ):
        body = await r.json()
        assert r.status == 400
    assert "max_tokens" in body["error"]["message"]
    assert key_value("alpha") not in str(body)
    assert stack.counts() == {"alpha": 1, "beta": 0, "gamma": 0}  # caller's fault: no fallback


async def test_concurrent_streams(stack: Stack) -> None:
    await _setup(stack)
    sc = await stack.start_sidecar(fallback=True)
    client = openai_client(sc)
    results = await asyncio.gather(*(_stream(client) for _ in range(16)))
    assert all(t and r["provider"] == "alpha" for t, r in results)


async def test_sequential_streams_reuse_one_upstream_connection(stack: Stack) -> None:
    """Providers send the chunked terminator after [DONE], often in its own segment.

    The sidecar reads it before handing the connection back; releasing at [DONE]
    made aiohttp close the connection, so about half of all streams paid a new
    handshake.
    """
    await _setup(stack, alpha={"done_to_eof_ms": 5.0})
    sc = await stack.start_sidecar(fallback=True)
    client = openai_client(sc)
    for _ in range(12):
        text, routing = await _stream(client)
        assert text and routing is not None and routing["provider"] == "alpha"
    peers = {r.peer for r in stack.providers["alpha"].requests}
    assert len(peers) == 1 and "" not in peers, peers


async def test_silence_between_chunks_ends_the_stream_with_a_timeout(stack: Stack) -> None:
    # Two tokens a second upstream, but at most 0.2 s of silence allowed between chunks.
    await _setup(stack, alpha={"tokens_per_second": 2.0})
    sc = await stack.start_sidecar(fallback=True, chunk_timeout_s=0.2)
    got, err = await _stream_until_error(openai_client(sc))
    assert got  # the first token went through; the silence after it is the timeout
    assert "no chunk for 0.2s" in str(err.message)
    assert stack.counts() == {"alpha": 1, "beta": 0, "gamma": 0}
