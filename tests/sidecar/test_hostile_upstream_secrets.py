"""A provider echoing the sidecar's key in disguise: base64, percent-encoded, JSON-escaped.

Found by a black-box secrets audit: the redactor searched the key's own bytes
only, so a provider that wrote it base64-encoded (``Authorization`` echoed
Basic-style), percent-encoded (a key holding ``+``, ``/`` or ``=`` echoed from
a URL) or JSON-escaped in a relayed stream chunk (``\\u0073k-…``: the sidecar
relays those bytes as they are and the app's JSON parser turns them back into
the key) put the key in front of the app. Real router, real sidecar, a real
HTTP upstream; the app's bytes are checked after decoding each disguise, so a
key that got through in any of them fails the test. The last test keeps the
exits the audit found clean (response headers, a redirect, text and HTML
bodies, an error event cut inside the key) clean.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from sidecar_helpers import MODEL, Stack, raw_upstream, sse_chunk, write_raw_catalog
from sidecar_helpers import test_settings as sidecar_settings

from sidecar.app import SidecarApp

PLAIN_KEY = "sk-audit-0123456789abcdefXYZ-SECRET"
#: Characters a URL percent-encodes and a regular expression treats as special.
ODD_KEY = "sk+a/b=c.d*e(f)[g]|h^$-0123456789"
#: Its base64 holds "/", which PHP's json_encode writes as "\\/".
SLASH_B64_KEY = "sk-ab??c?-0123456789abcdefXYZ"
#: Under 16 characters: searched whole, never by halves.
SHORT_KEY = "k3y-8chX"
KEY_ENV = "AUDIT_ALPHA_API_KEY"


def _uescaped(text: str) -> str:
    """``text`` with every character written as a JSON ``\\uXXXX`` escape."""
    return "".join(f"\\u{ord(c):04x}" for c in text)


def _decoded(data: bytes) -> bytes:
    """``data`` plus what an app could decode from it: percent-decoding, JSON escapes,
    and every base64-looking run (at each of the four start offsets)."""
    views = [data, urllib.parse.unquote_to_bytes(data)]
    unescaped = re.sub(rb"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)).encode(), data)
    views.append(unescaped.replace(b"\\/", b"/"))
    for run in re.findall(rb"[A-Za-z0-9+/=_-]{12,}", data):
        for text in (run, run.replace(b"-", b"+").replace(b"_", b"/")):
            for cut in range(4):
                tail = text[cut:].rstrip(b"=")
                with contextlib.suppress(binascii.Error, ValueError):
                    views.append(base64.b64decode(tail + b"=" * (-len(tail) % 4)))
    return b"\n".join(views)


def _assert_no_key(data: bytes, key: str) -> None:
    raw = key.encode()
    half = len(raw) // 2
    seen = _decoded(data)
    for fragment in (raw, raw[:half], raw[half:]) if len(raw) >= 16 else (raw,):
        assert fragment not in seen, f"{fragment!r} reached the app in {data[:300]!r}"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def _sidecar_over(
    stack: Stack, tmp_path: Path, handler: Handler, key: str
) -> AsyncIterator[SidecarApp]:
    """A router and a sidecar whose only provider, ``alpha``, answers with ``handler``
    and is called with ``key``."""
    async with raw_upstream(handler) as url:
        stack.catalog_path = write_raw_catalog(
            tmp_path / "catalog.yaml", {"alpha": url}, {"alpha": KEY_ENV}
        )
        router = await stack.start_router()
        stack.sidecar = SidecarApp(
            sidecar_settings(router=router.grpc_address, environ={KEY_ENV: key})
        )
        await stack.sidecar.start()
        yield stack.sidecar


async def _post(sc: SidecarApp, stream: bool) -> tuple[int, bytes]:
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    async with (
        aiohttp.ClientSession() as s,
        s.post(sc.base_url + "/chat/completions", json=payload) as r,
    ):
        return r.status, await r.read()


def _echo_error(status: int, encode: Callable[[str], str]) -> Handler:
    """An error answer quoting the request's Authorization header and key, ``encode``d."""

    async def answer(request: web.Request) -> web.Response:
        auth = request.headers["Authorization"]
        key = auth.removeprefix("Bearer ")
        message = f"bad credentials {encode(auth)} (key {encode(key)})"
        return web.json_response({"error": {"message": message}}, status=status)

    return answer


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def _percent(text: str) -> str:
    return urllib.parse.quote(text, safe="")


@pytest.mark.parametrize("status", [400, 401, 500])
@pytest.mark.parametrize(
    ("encode", "key"),
    [
        (_b64, PLAIN_KEY),
        (_b64url, ODD_KEY),
        (_percent, ODD_KEY),
        (_b64, ODD_KEY),
        (_b64, SHORT_KEY),
    ],
    ids=[
        "base64",
        "base64url-odd-key",
        "percent-odd-key",
        "base64-odd-key",
        "base64-short-key",
    ],
)
async def test_an_encoded_key_in_an_error_body_never_reaches_the_app(
    stack: Stack,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    status: int,
    encode: Callable[[str], str],
    key: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with _sidecar_over(stack, tmp_path, _echo_error(status, encode), key) as sc:
        got, data = await _post(sc, stream=False)
    assert got == (400 if status == 400 else 502)
    assert b"bad credentials" in data  # the provider's message itself is passed on
    _assert_no_key(data, key)
    _assert_no_key(
        "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records).encode(), key
    )


def _escaped_key_in_content(spell: Callable[[str], str]) -> Handler:
    """A stream whose second chunk holds ``spell(key)`` written with JSON escapes: every
    "/" as "\\/" (PHP's json_encode) and, for ``_uescaped``, every character as
    ``\\uXXXX`` (an encoder writing ASCII-only JSON)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        key = request.headers["Authorization"].removeprefix("Bearer ")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse_chunk({"role": "assistant", "content": "hello"}))
        second = sse_chunk({"content": "your key: KEY"}).replace(b"KEY", spell(key).encode())
        await resp.write(second.replace(b"/", b"\\/"))
        await resp.write(sse_chunk({}, finish="stop") + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    return answer


@pytest.mark.parametrize(
    ("spell", "key"),
    [(_uescaped, PLAIN_KEY), (_uescaped, ODD_KEY), (_b64, SLASH_B64_KEY)],
    ids=["plain-key", "odd-key", "base64-php-slashes"],
)
async def test_a_json_escaped_key_in_a_relayed_chunk_never_reaches_the_app(
    stack: Stack, tmp_path: Path, spell: Callable[[str], str], key: str
) -> None:
    async with _sidecar_over(stack, tmp_path, _escaped_key_in_content(spell), key) as sc:
        status, data = await _post(sc, stream=True)
    assert status == 200
    events = [json.loads(ln[6:]) for ln in data.split(b"\n") if ln.startswith(b"data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text.startswith("helloyour key: ")  # the chunk was relayed, the key cut out
    _assert_no_key(data, key)
    _assert_no_key(text.encode(), key)  # what the app reads once it parsed the JSON
    _assert_no_key(text.encode(), key)


#: Both quote kinds: Python's repr escapes one of them (``\'``), JSON the other (``\"``).
QUOTES_KEY = "sk-quo'te\"s-0123456789abcdef"


async def _error_event_not_a_message(request: web.Request) -> web.StreamResponse:
    """An SSE error event whose ``error`` is a list quoting the key (no ``message``)."""
    key = request.headers["Authorization"].removeprefix("Bearer ")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b"data: " + json.dumps({"error": ["denied", {"key": key}]}).encode() + b"\n\n")
    await resp.write_eof()
    return resp


async def test_an_error_event_that_is_not_a_message_is_shown_as_json_without_the_key(
    stack: Stack, tmp_path: Path
) -> None:
    async with _sidecar_over(stack, tmp_path, _error_event_not_a_message, QUOTES_KEY) as sc:
        status, data = await _post(sc, stream=True)
    assert status == 502
    message = json.loads(data)["error"]["message"]
    # JSON notation (the project's rule for values), not a Python repr ...
    assert 'upstream error event: ["denied",{"key":"[REDACTED]' in message
    # ... so no spelling of the key survives: raw, JSON-escaped or repr-escaped.
    raw = QUOTES_KEY.encode()
    for half in (raw[: len(raw) // 2], raw[len(raw) // 2 :]):
        for spelling in (half, half.replace(b"'", b"\\'"), half.replace(b'"', b'\\"')):
            assert spelling not in message.encode()
            assert spelling not in data


def _echo(request: web.Request) -> str:
    """What a debugging provider quotes: the Authorization header and the full URL."""
    return f"auth {request.headers['Authorization']} at {request.url}"


async def _in_headers(request: web.Request) -> web.StreamResponse:
    key = request.headers["Authorization"].removeprefix("Bearer ")
    headers = {
        "x-debug-auth": request.headers["Authorization"],
        "WWW-Authenticate": f'Bearer realm="{key}"',
        "Retry-After": key,
    }
    return web.json_response({"error": {"message": "no"}}, status=429, headers=headers)


async def _redirect(request: web.Request) -> web.StreamResponse:
    key = request.headers["Authorization"].removeprefix("Bearer ")
    return web.Response(status=307, headers={"Location": f"https://elsewhere.test/v1?key={key}"})


async def _plain_text(request: web.Request) -> web.StreamResponse:
    return web.Response(status=503, text=_echo(request))


async def _html(request: web.Request) -> web.StreamResponse:
    page = f"<html><body><h1>502</h1><pre>{_echo(request)}</pre></body></html>"
    return web.Response(status=502, text=page, content_type="text/html")


async def _error_event_split_across_writes(request: web.Request) -> web.StreamResponse:
    """An SSE error event quoting the key, written in two pieces cut inside the key."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    event = b"data: " + json.dumps({"error": {"message": _echo(request)}}).encode() + b"\n\n"
    cut = event.index(b"Bearer ") + 7 + 5
    await resp.write(event[:cut])
    await resp.write(event[cut:])
    await resp.write_eof()
    return resp


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    "handler",
    [_in_headers, _redirect, _plain_text, _html, _error_event_split_across_writes],
    ids=["headers", "redirect", "text", "html", "split-event"],
)
async def test_a_key_echoed_anywhere_else_reaches_no_output(
    stack: Stack,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    handler: Handler,
    stream: bool,
) -> None:
    """Response headers, a redirect's Location, text and HTML bodies, an error event
    cut inside the key: none of it reaches the app's body or headers, the log (at
    DEBUG) or ``/metrics``. (The audit found these clean; this keeps them so.)"""
    caplog.set_level(logging.DEBUG)
    async with _sidecar_over(stack, tmp_path, handler, PLAIN_KEY) as sc:
        payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                sc.base_url + "/chat/completions",
                json={**payload, "stream": stream},
                headers={"Authorization": "Bearer app-own-token-0123456789"},
            ) as r,
        ):
            data = await r.read()
            headers = "\n".join(f"{k}: {v}" for k, v in r.headers.items()).encode()
        async with (
            aiohttp.ClientSession() as s,
            s.get(sc.base_url.removesuffix("/v1") + "/metrics") as m,
        ):
            metrics = await m.read()
    assert r.status in (429, 502, 503)
    logged = "\n".join(rec.getMessage() + str(rec.__dict__) for rec in caplog.records).encode()
    for output in (data, headers, metrics, logged):
        _assert_no_key(output, PLAIN_KEY)
        assert b"app-own-token" not in output
