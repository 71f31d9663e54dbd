"""Each transport failure says what happened, so an operator can tell them apart.

Found by a black-box fault audit (a raw TCP "provider" on loopback misbehaving one
way per test, a real sidecar): an https URL pointing at a plain port (the TLS
handshake never completes), a provider that never answers a non-streaming
request, and an answer that stops arriving were all ``"timeout"``; a provider
that answered with a status line or headers no HTTP parser reads was
``"connect: ClientResponseError"`` (it had connected), and with the lean client
its oversized headers were httptools' ``User callback error``; a refused
connection was ``"connect: ClientConnectorError"``, one closed before any answer
``"connect: ServerDisconnectedError"``, a body that broke off
``"server_error: ClientPayloadError"``; and an attempt cut short by
the request deadline named the first-token wait it never reached ("no first
token within 30s" after 10 s, found with a hedge whose backup failed at once).
The attempt's ``error`` (in
``routing.attempts`` and the 502/504 message) now names the wait that ran out
or the reason the response could not be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sidecar_helpers import MODEL, Stack, write_raw_catalog

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_tcp(reply: Reply) -> AsyncIterator[int]:
    """A TCP server on loopback whose every connection is handed to ``reply``; yields the port."""
    conns: list[asyncio.StreamWriter] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conns.append(w)
        with contextlib.suppress(ConnectionError):
            await reply(r, w)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for w in conns:
            w.transport.abort()
        await server.wait_closed()


async def _read_head(r: asyncio.StreamReader) -> None:
    await r.readuntil(b"\r\n\r\n")


async def garbage_status(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await _read_head(r)
    w.write(b"HELLO WORLD\r\n\r\n")
    await w.drain()


async def giant_headers(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await _read_head(r)
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Big: " + b"a" * 200_000)
    w.write(b"\r\n\r\n")
    await w.drain()


async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Reads what comes (a request, or a TLS ClientHello that never gets an answer)."""
    while await r.read(65536):
        pass


async def _first_attempt_error(
    stack: Stack, tmp_path: Path, url: str, stream: bool, **over: Any
) -> tuple[int, str, str]:
    stack.catalog_path = write_raw_catalog(tmp_path / "catalog.yaml", {"alpha": url})
    sc = await stack.start_sidecar(fallback=True, **over)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "stream": stream,
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(sc.base_url + "/chat/completions", json=body) as r,
    ):
        answer = await r.json()
    attempt = answer["routing"]["attempts"][0]
    assert attempt["error"] in answer["error"]["message"]
    return r.status, attempt["error_class"], attempt["error"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("client", ["lean", "aiohttp"])
@pytest.mark.parametrize("answer", [garbage_status, giant_headers], ids=["garbage", "giant"])
async def test_an_unreadable_response_says_why(
    stack: Stack, tmp_path: Path, stream: bool, client: str, answer: Any
) -> None:
    """A garbage status line, or response headers over the limit: both unreadable, and
    said so (they read "connect: ClientResponseError", and the lean client's giant
    headers httptools' "User callback error")."""
    async with raw_tcp(answer) as port:
        status, cls, error = await _first_attempt_error(
            stack, tmp_path, f"http://127.0.0.1:{port}/v1", stream, upstream_client=client
        )
    assert status == 502
    assert error.startswith(f"{cls}: unreadable response: "), error
    assert "User callback error" not in error


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_refused_connection_says_so(stack: Stack, tmp_path: Path, stream: bool) -> None:
    with socket.socket() as sock:  # a port nothing listens on (bound, never listening)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        status, cls, error = await _first_attempt_error(
            stack, tmp_path, f"http://127.0.0.1:{port}/v1", stream
        )
    assert (status, cls) == (502, "connect")
    assert error.startswith("connect: ") and "ClientConnectorError" not in error, error


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_tls_to_a_plain_port_is_a_connect_timeout(
    stack: Stack, tmp_path: Path, stream: bool
) -> None:
    async with raw_tcp(silent) as port:
        status, cls, error = await _first_attempt_error(
            stack, tmp_path, f"https://127.0.0.1:{port}/v1", stream, connect_timeout_s=0.3
        )
    assert (status, cls, error) == (504, "timeout", "connect: not connected within 0.3s")


async def test_a_non_streaming_answer_that_never_comes_names_its_wait(
    stack: Stack, tmp_path: Path
) -> None:
    async with raw_tcp(silent) as port:
        status, cls, error = await _first_attempt_error(
            stack, tmp_path, f"http://127.0.0.1:{port}/v1", False, nonstream_timeout_s=0.4
        )
    assert (status, cls, error) == (504, "timeout", "no complete answer within 0.4s")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_wait_cut_short_by_the_request_deadline_names_the_deadline(
    stack: Stack, tmp_path: Path, stream: bool
) -> None:
    """It said "no first token within 30s" (a wait it never reached) after 10 s."""
    async with raw_tcp(silent) as port:
        status, cls, error = await _first_attempt_error(
            stack,
            tmp_path,
            f"http://127.0.0.1:{port}/v1",
            stream,
            request_deadline_s=0.4,
            first_byte_timeout_s=5.0,
            nonstream_timeout_s=5.0,
        )
    what = "first token" if stream else "complete answer"
    assert (status, cls) == (504, "timeout")
    # The text names what was left of the deadline when the attempt began: 0.4 s
    # less the few milliseconds before it (0.399 on a loaded machine).
    match = re.fullmatch(rf"no {what} within ([0-9.]+)s \(the request deadline\)", error)
    assert match is not None, error
    assert 0.3 < float(match.group(1)) <= 0.4, error


async def closes_at_once(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await _read_head(r)
    w.close()


async def headers_then_reset(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await _read_head(r)
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{")
    await w.drain()
    w.transport.abort()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("client", ["lean", "aiohttp"])
async def test_a_provider_closing_without_an_answer_says_so(
    stack: Stack, tmp_path: Path, stream: bool, client: str
) -> None:
    """It was ``connect: ServerDisconnectedError``."""
    async with raw_tcp(closes_at_once) as port:
        status, cls, error = await _first_attempt_error(
            stack, tmp_path, f"http://127.0.0.1:{port}/v1", stream, upstream_client=client
        )
    assert (status, cls) == (502, "connect")
    assert error == "connect: the provider closed the connection before answering", error


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
async def test_a_body_that_breaks_off_says_so(stack: Stack, tmp_path: Path, client: str) -> None:
    """It was ``server_error: ClientPayloadError``."""
    async with raw_tcp(headers_then_reset) as port:
        status, cls, error = await _first_attempt_error(
            stack, tmp_path, f"http://127.0.0.1:{port}/v1", False, upstream_client=client
        )
    assert (status, cls) == (502, "server_error")
    assert error == "server_error: the response body broke off", error


async def corrupt_gzip(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await _read_head(r)
    body = b"\x1f\x8b\x08\x00not-gzip-at-all" * 4
    w.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    await w.drain()


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
async def test_a_body_that_does_not_decode_says_so(
    stack: Stack, tmp_path: Path, client: str
) -> None:
    """It was ``server_error: ClientPayloadError``, as a body that broke off."""
    async with raw_tcp(corrupt_gzip) as port:
        status, cls, error = await _first_attempt_error(
            stack, tmp_path, f"http://127.0.0.1:{port}/v1", False, upstream_client=client
        )
    assert (status, cls) == (502, "server_error")
    assert error == "server_error: the response body does not decode (Content-Encoding)", error


async def token_then_bad_chunk(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await _read_head(r)
    event = (
        b'data: {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up", '
        b'"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]}\n\n'
    )
    w.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(event)
        + event
        + b"\r\n"
    )
    await w.drain()
    await asyncio.sleep(0.05)  # the first token goes out on its own
    w.write(b"ZZZ\r\nnot a chunk\r\n")
    await w.drain()


async def test_a_stream_that_breaks_after_its_first_token_says_why(
    stack: Stack, tmp_path: Path
) -> None:
    """The app's error event said ``upstream broke mid-stream: ClientResponseError``."""
    async with raw_tcp(token_then_bad_chunk) as port:
        stack.catalog_path = write_raw_catalog(
            tmp_path / "catalog.yaml", {"alpha": f"http://127.0.0.1:{port}/v1"}
        )
        sc = await stack.start_sidecar(fallback=True)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with (
            aiohttp.ClientSession() as s,
            s.post(sc.base_url + "/chat/completions", json=body) as r,
        ):
            text = await r.text()
    errors = [
        json.loads(line[5:])["error"]
        for line in text.splitlines()
        if line.startswith("data: {") and '"error"' in line
    ]
    assert len(errors) == 1, text
    message = errors[0]["message"]
    assert "upstream broke mid-stream: unreadable response: " in message, message
