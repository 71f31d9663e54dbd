"""The lean HTTP front (sidecar/lean_server.py) against aiohttp's server, byte for byte.

Each test runs on both ``--http-server`` values over a raw socket, so what the
lean front serves itself (plain chat POSTs) and what it hands to aiohttp
(everything else, on the same connection) are held to the same contract:
keep-alive reuse, pipelined requests answered in order, chunked bodies,
``Expect: 100-continue``, an app leaving before its first token or mid-stream,
oversize bodies, bad request bodies, malformed requests, request heads that
never finish. What the lean front writes itself is held to aiohttp's bytes
(every kind of answer compared on both), to write backpressure (a reader that
stops parks the relay), and to ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import pytest
from sidecar_helpers import MODEL, Stack, trickle_until_closed, wait_for

from sidecar.config import SidecarSettings, check_settings

IDLE_S = 0.5
DEADLINE_S = 10.0
SERVERS = pytest.mark.parametrize("server", ["lean", "aiohttp"])


def _chat(body: dict[str, object] | None = None, *, extra: bytes = b"") -> bytes:
    payload = json.dumps(
        body or {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    ).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + extra
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )


def _streamed(max_tokens: int) -> dict[str, object]:
    """A streamed chat request's body asking for ``max_tokens``."""
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "stream": True,
    }


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, headers (lower-case names), body (de-chunked)."""
    async with asyncio.timeout(DEADLINE_S):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def _sidecar(stack: Stack, server: str, **over: object) -> tuple[str, int]:
    if not stack.providers:
        await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    over = {"client_idle_timeout_s": IDLE_S, **over}
    sc = await stack.start_sidecar(fallback=True, http_server=server, **over)
    return "127.0.0.1", sc.port


@contextlib.asynccontextmanager
async def _connected(
    stack: Stack, server: str, **over: object
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A sidecar on ``server`` and one raw connection to it, closed on the way out."""
    host, port = await _sidecar(stack, server, **over)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        yield reader, writer
    finally:
        writer.close()


def _lean_connections(stack: Stack) -> int:
    front = stack.sidecar._front if stack.sidecar is not None else None
    return -1 if front is None else len(front.connections)


@SERVERS
async def test_keep_alive_reuse_then_idle_close(stack: Stack, server: str) -> None:
    async with _connected(stack, server) as (reader, writer):
        for stream in (False, True, False):
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            writer.write(_chat({**body, "max_tokens": 4, "stream": stream}))
            status, headers, payload = await _response(reader)
            assert status == 200, payload
            assert headers.get("connection") != "close"
            if stream:
                assert payload.endswith(b"data: [DONE]\n\n")
            else:
                assert json.loads(payload)["routing"]["provider"] == "alpha"
        # Three requests on one connection: the provider saw three, the front held one.
        assert len(stack.providers["alpha"].requests) == 3
        assert _lean_connections(stack) == (1 if server == "lean" else -1)
        async with asyncio.timeout(DEADLINE_S):
            assert await reader.read() == b""  # closed once idle IDLE_S


@SERVERS
async def test_pipelined_requests_are_answered_in_order(stack: Stack, server: str) -> None:
    async with _connected(stack, server) as (reader, writer):
        streamed = {"model": MODEL, "messages": [{"role": "user", "content": "a"}], "stream": True}
        # Two chat POSTs, then a GET the lean front hands to aiohttp, then a chat POST
        # that aiohttp serves on what is now its connection: all in one send.
        writer.write(
            _chat() + _chat(streamed) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + _chat()
        )
        first = await _response(reader)
        second = await _response(reader)
        third = await _response(reader)
        fourth = await _response(reader)
        assert [first[0], second[0], third[0], fourth[0]] == [200, 200, 200, 200]
        assert json.loads(first[2])["object"] == "chat.completion"
        assert second[1]["content-type"] == "text/event-stream"
        assert second[2].endswith(b"data: [DONE]\n\n")
        assert json.loads(third[2]) == {"status": "ok"}
        assert json.loads(fourth[2])["object"] == "chat.completion"


@SERVERS
async def test_chunked_request_body(stack: Stack, server: str) -> None:
    async with _connected(stack, server) as (reader, writer):
        payload = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        half = len(payload) // 2
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\n\r\n"
            + f"{half:x}\r\n{payload[:half]}\r\n".encode()
            + f"{len(payload) - half:x}\r\n{payload[half:]}\r\n0\r\n\r\n".encode()
        )
        status, _, body = await _response(reader)
        assert status == 200, body
        assert json.loads(body)["routing"]["provider"] == "alpha"
        assert _lean_connections(stack) == (0 if server == "lean" else -1)  # aiohttp's now


@SERVERS
async def test_expect_100_continue(stack: Stack, server: str) -> None:
    async with _connected(stack, server) as (reader, writer):
        request = _chat()
        head, _, body = request.partition(b"\r\n\r\n")
        writer.write(head + b"\r\nExpect: 100-continue\r\n\r\n")
        async with asyncio.timeout(DEADLINE_S):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        writer.write(body)
        status, _, answer = await _response(reader)
        assert status == 200, answer


@SERVERS
async def test_app_leaving_mid_stream_stops_the_provider(stack: Stack, server: str) -> None:
    await stack.add_providers({"alpha": {"tokens_per_second": 20.0}})
    host, port = await _sidecar(stack, server, chunk_timeout_s=30.0)
    fake = stack.providers["alpha"]
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(_chat(_streamed(200)))
    async with asyncio.timeout(DEADLINE_S):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    await wait_for(lambda: fake.requests and fake.requests[-1].tokens >= 3, timeout=5)
    writer.close()
    await wait_for(lambda: fake.requests[-1].outcome == "client_disconnected", timeout=3)
    assert fake.requests[-1].tokens < 200
    sc = stack.sidecar
    assert sc is not None
    await wait_for(lambda: sc.metrics.requests.labels("499")._value.get() == 1, timeout=3)


@SERVERS
async def test_oversize_body_is_a_413_in_openai_shape(stack: Stack, server: str) -> None:
    async with _connected(stack, server, max_body_bytes=1000) as (reader, writer):
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000\r\n\r\n" + b"{" * 100
        )
        status, headers, body = await _response(reader)
        assert status == 413
        assert json.loads(body)["error"]["code"] == "body_too_large"
        assert headers.get("connection") == "close"  # the rest of that body is not a request
        assert stack.providers["alpha"].requests == []


@SERVERS
async def test_a_bad_request_gets_its_json_error_and_the_connection_serves_the_next(
    stack: Stack, server: str
) -> None:
    """The app's error middleware reads the request's body state (``content.is_eof()``)
    to decide on ``Connection: close``: the lean request must answer it too, or every
    400 became a closed connection and an ERROR traceback."""
    async with _connected(stack, server) as (reader, writer):
        bad = b"{not json"
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(bad)).encode() + b"\r\n\r\n" + bad
        )
        status, headers, body = await _response(reader)
        assert status == 400 and json.loads(body)["error"]["code"] == "invalid_json"
        assert headers.get("connection") != "close"
        writer.write(_chat())
        status, _, body = await _response(reader)
        assert status == 200, body


@SERVERS
@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
        _chat(extra=b"Content-Length: 3\r\n"),  # and the body's own: two lengths
        _chat(extra=b"Bad Name: x\r\n"),
        b"GARBAGE\r\n\r\n",
        _chat(extra=b"a: b\r\n" * 200),  # aiohttp's max_headers is 128
    ],
    ids=["bad-length", "two-lengths", "bad-name", "bad-request-line", "too-many-fields"],
)
async def test_malformed_request_is_a_400(stack: Stack, server: str, request_bytes: bytes) -> None:
    async with _connected(stack, server) as (reader, writer):
        writer.write(request_bytes)
        async with asyncio.timeout(DEADLINE_S):
            head = await reader.readuntil(b"\r\n")
        assert head.split()[1] == b"400", head  # aiohttp's own answer (as HTTP/1.0)
        assert stack.providers["alpha"].requests == []


@SERVERS
async def test_a_chat_head_sent_a_byte_at_a_time_hits_the_idle_timeout(
    stack: Stack, server: str
) -> None:
    request = _chat().partition(b"\r\n\r\n")[0] + b"\r\nX-Slow: " + b"a" * 4000
    async with _connected(stack, server) as (reader, writer):
        closed = asyncio.create_task(reader.read())
        try:
            await trickle_until_closed(writer, request, closed, DEADLINE_S)
        finally:
            closed.cancel()


def test_http_server_setting_is_checked() -> None:
    assert check_settings(SidecarSettings(http_server="aiohttp")) is None
    problem = check_settings(SidecarSettings(http_server="nginx"))
    assert problem == '--http-server must be one of ["lean", "aiohttp"], got "nginx"'


@SERVERS
async def test_app_leaving_before_the_first_token_stops_the_provider(
    stack: Stack, server: str
) -> None:
    """Nothing is written before the first token, so only the handler's cancellation
    (aiohttp's handler_cancellation, the lean front's connection_lost) can notice."""
    await stack.add_providers({"alpha": {"ttft_median_ms": 20_000.0}})
    host, port = await _sidecar(stack, server, first_byte_timeout_s=30.0)
    fake = stack.providers["alpha"]
    _reader, writer = await asyncio.open_connection(host, port)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    writer.write(_chat(body))
    await wait_for(lambda: len(fake.requests) == 1, timeout=5)
    writer.close()
    await wait_for(lambda: fake.requests[-1].outcome == "client_disconnected", timeout=3)
    sc = stack.sidecar
    assert sc is not None
    await wait_for(lambda: sc.metrics.requests.labels("499")._value.get() == 1, timeout=3)


async def _raw_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One response as sent: its head, and its body with the framing left in."""
    async with asyncio.timeout(DEADLINE_S):
        head = await reader.readuntil(b"\r\n\r\n")
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            body = b""
            while True:
                line = await reader.readuntil(b"\r\n")
                size = int(line.strip(), 16)
                body += line + await reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            length = int(lower.split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
    return head, body


def _masked(head: bytes, *names: bytes) -> bytes:
    """``head`` with the values of ``names`` (and always Date and the made request id)
    replaced: they change per run."""
    lines = head.split(b"\r\n")
    for i, line in enumerate(lines):
        name, _, _ = line.partition(b":")
        if name.lower() in (b"date", b"x-request-id", *names):
            lines[i] = name + b": *"
    return b"\r\n".join(lines)


async def _answers_on(stack: Stack, server: str) -> dict[str, bytes]:
    """What one sidecar sends for each kind of answer: heads, and whole errors."""
    await _sidecar(stack, server, max_body_bytes=2000)
    sc = stack.sidecar
    assert sc is not None
    seen: dict[str, bytes] = {}
    streamed = {"model": MODEL, "messages": [{"role": "user", "content": "a"}], "stream": True}
    bad = b"{not json"
    asks = {
        "stream": _chat(streamed),
        "json": _chat(),
        "invalid-json": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: " + str(len(bad)).encode() + b"\r\n\r\n" + bad,
        "unknown-model": _chat({"model": "nope", "messages": [{"role": "user", "content": "a"}]}),
        "too-large": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 5000\r\n\r\n" + b"[" * 100,
        "connection-close": _chat(extra=b"Connection: close\r\n"),
    }
    for name, request in asks.items():
        reader, writer = await asyncio.open_connection("127.0.0.1", sc.port)
        try:
            writer.write(request)
            head, body = await _raw_response(reader)
            if name in ("stream", "json", "connection-close"):
                # The answer's id and timing differ per request: the head is compared,
                # and the body's framing checked here.
                seen[name] = _masked(head, b"content-length")
                if name == "stream":
                    assert body.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), body[-40:]
                else:
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    assert len(body) == length and json.loads(body)["object"] == "chat.completion"
            else:
                seen[name] = _masked(head) + body
            if name == "connection-close":
                async with asyncio.timeout(DEADLINE_S):
                    assert await reader.read() == b""  # and it closes
        finally:
            writer.close()
    await sc.stop()
    stack.sidecar = None
    return seen


async def test_every_answer_is_the_same_bytes_on_both_servers(stack: Stack) -> None:
    """The lean front writes answers itself (status line, headers, chunked or
    Content-Length framing): byte for byte what aiohttp's server sends, Date aside."""
    lean = await _answers_on(stack, "lean")
    aio = await _answers_on(stack, "aiohttp")
    assert lean == aio
    assert lean["stream"].startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
    assert b"Transfer-Encoding: chunked\r\n" in lean["stream"]
    assert b"x-router-provider: alpha\r\n" in lean["stream"]
    assert b"Transfer-Encoding" not in lean["json"] and b"Content-Length: *" in lean["json"]
    assert b"Connection: close\r\n" in lean["connection-close"]
    assert b"Connection: close\r\n" in lean["too-large"]
    assert b"Connection" not in lean["json"] and b"Connection" not in lean["stream"]
    assert lean["invalid-json"].startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert lean["too-large"].startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
    assert lean["unknown-model"].split(b" ")[1] == b"404", lean["unknown-model"][:200]
    assert all(b"\r\nx-request-id: *" in answer for answer in lean.values())


async def test_a_slow_reader_holds_the_relay_in_the_lean_writer_drain(stack: Stack) -> None:
    """Backpressure: once the transport pauses, the relay waits for it to resume instead
    of queueing the rest of the answer in memory (the write buffer stays bounded)."""
    await stack.add_providers({"alpha": {"tokens_per_second": 0.0}})
    host, port = await _sidecar(stack, "lean", chunk_timeout_s=30.0, client_idle_timeout_s=30.0)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    try:
        writer.write(_chat(_streamed(40000)))
        front = stack.sidecar._front if stack.sidecar is not None else None
        assert front is not None
        # The relay is parked on the connection's drain waiter: it stopped writing.
        await wait_for(
            lambda: any(c._drain_waiter is not None for c in front.connections), timeout=5
        )
        (conn,) = front.connections
        assert conn.transport is not None
        assert conn.transport.get_write_buffer_size() < 1 << 20  # 40,000 tokens are ~6 MB
        status, _, payload = await _response(reader)
        assert status == 200
        assert payload.endswith(b"data: [DONE]\n\n")
        assert stack.providers["alpha"].requests[-1].tokens == 40000
    finally:
        writer.close()
