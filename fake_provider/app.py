"""The fake provider's aiohttp application: OpenAI-compatible endpoints plus a control API.

It behaves like a real hosted LLM provider from a client's point of view
(status codes, error JSON, SSE framing, pacing) so that the sidecar, the tests
and the benchmarks exercise the same code paths they would against Groq or
Cerebras, while everything that matters for routing (latency, errors, outages)
is dialled in by configuration or scripted incidents.

The hot path (streaming chunks) avoids per-token JSON encoding: chunk bytes are
assembled from per-request prefixes and precomputed token strings, so the fake
adds as little overhead as possible to the latency a benchmark measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

from aiohttp import web

from fake_provider.config import (
    RUNTIME_TUNABLE_FIELDS,
    FakeProviderConfig,
    Incident,
)

Clock = Callable[[], float]
"""A monotonic clock in seconds; injectable so tests can drive incident windows."""

logger = logging.getLogger("fake_provider")

# Headers never recorded: credentials must not end up in test output or logs.
_SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"}
)
_MAX_TOKENS_CAP = 65_536
_HANG_POLL_S = 0.1

_LOREM_TEXT = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud "
    "exercitation ullamco laboris nisi aliquip ex ea commodo consequat duis aute irure "
    "in reprehenderit voluptate velit esse cillum fugiat nulla pariatur excepteur sint "
    "occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim id est "
    "laborum"
)
_LOREM: tuple[str, ...] = tuple(_LOREM_TEXT.split())
# Precomputed once: token text and its JSON-quoted bytes, first word without and
# later words with a leading space (as BPE tokenizers emit them).
_FIRST_TEXT = tuple(w.capitalize() for w in _LOREM)
_NEXT_TEXT = tuple(" " + w for w in _LOREM)
_FIRST_JSON = tuple(json.dumps(t).encode() for t in _FIRST_TEXT)
_NEXT_JSON = tuple(json.dumps(t).encode() for t in _NEXT_TEXT)
_VOCAB = len(_LOREM)

_SSE_DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class RecordedRequest:
    """What the fake received for one chat completion, and what it answered.

    Lets tests assert where a router sent traffic and with which body. The
    ``Authorization`` value is never stored: only whether it was present and,
    if a key is configured, whether it matched.
    """

    seq: int
    time: float  # wall clock (unix seconds) at receipt
    t: float  # seconds since server start on the server's (injectable) clock
    method: str
    path: str
    headers: dict[str, str]
    auth_present: bool
    auth_ok: bool | None  # None when no key is configured
    #: The client's "host:port": requests on one kept-alive connection share it,
    #: so tests can tell whether a client reuses its connections.
    peer: str = ""
    body: Any = None  # parsed JSON body, None if it did not parse
    model: str | None = None
    stream: bool = False
    status: int | None = None  # None: no HTTP status was sent (refuse, hang, drop pre-headers)
    outcome: str = "pending"  # ok | error | rate_limited | refused | hang | dropped | ...
    tokens: int = 0  # content tokens actually sent
    slowdown: float = 1.0
    planned_ttft_ms: float | None = None
    # Measured from receipt to the first content token handed to the socket
    # (non-streaming: to the whole body). planned_ttft_ms is the drawn value times slowdown.
    ttft_ms: float | None = None
    duration_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form for ``GET /_fake/requests``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class ProviderState:
    """Mutable server state shared by all handlers of one app."""

    config: FakeProviderConfig
    clock: Clock
    t0: float
    initial_config: FakeProviderConfig
    rng: random.Random
    incidents: list[Incident]
    records: deque[RecordedRequest]
    total_received: int = 0
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    _seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def now_s(self) -> float:
        """Seconds since server start on the injected clock (for incident windows)."""
        return self.clock() - self.t0

    def next_seq(self) -> int:
        return next(self._seq)

    def add_incident(self, incident: Incident) -> Incident:
        self.incidents.append(incident)
        return incident

    def clear_incidents(self) -> None:
        """Remove every incident, configured ones included (demo: "recover now")."""
        self.incidents.clear()

    def reset(self) -> None:
        """Back to the initial state: empty record, configured incidents, re-seeded RNG.

        Runtime config changes are undone too, so each test starts from the
        configuration it asked for.
        """
        self.config = self.initial_config
        self.records.clear()
        self.total_received = 0
        self.incidents[:] = list(self.initial_config.incidents)
        self.rng.seed(self.initial_config.seed)

    def update_config(self, **changes: Any) -> FakeProviderConfig:
        """Change tunables (TTFT, tps, rates) at runtime, e.g. from the demo."""
        bad = set(changes) - RUNTIME_TUNABLE_FIELDS
        if bad:
            raise ValueError(
                f"not runtime-tunable: {sorted(bad)}; allowed: {sorted(RUNTIME_TUNABLE_FIELDS)}"
            )
        self.config = replace(self.config, **changes)
        return self.config


STATE_KEY: web.AppKey[ProviderState] = web.AppKey("fake_provider_state", ProviderState)


def _error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> str:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def _error(
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        text=_error_body(message, type_, code, param),
        content_type="application/json",
        headers=headers,
    )


def _status_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status in (401, 403):
        return "authentication_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _kill_connection(request: web.Request) -> None:
    """Close the socket without (more of) an HTTP response.

    aiohttp then fails to write the handler's return value with a
    ConnectionError, which it swallows quietly; that is what we want.
    """
    transport = request.transport
    if transport is not None and not transport.is_closing():
        transport.close()


def _estimate_prompt_tokens(messages: list[Any]) -> int:
    """~4 characters per token plus a few per message; good enough for a fake's ``usage``.

    The fake counts as a provider would, by itself: it shares no code with the
    sidecar, whose own estimate it is there to check.
    """
    chars = sum(len(text) for msg in messages for text in _message_texts(msg))
    return max(1, math.ceil(chars / 4)) + 3 * len(messages)


def _message_texts(message: Any) -> list[str]:
    """The text of one chat message: its string content, or its text parts."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _safe_headers(request: web.Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items() if k.lower() not in _SENSITIVE_HEADERS}


def _check_auth(request: web.Request, expected: str | None) -> tuple[bool, bool | None]:
    """(auth header present, matched-or-None-if-no-key-configured)."""
    header = request.headers.get("Authorization")
    present = bool(header)
    if expected is None:
        return present, None
    if not header or not header.startswith("Bearer "):
        return present, False
    given = header[len("Bearer ") :].strip()
    return present, hmac.compare_digest(given.encode(), expected.encode())


def _unauthorized() -> web.Response:
    # Never echo the key (OpenAI echoes a masked one; we do not even do that).
    return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")


def _finish(state: ProviderState, rec: RecordedRequest, t_recv: float) -> None:
    """Close the record and emit one access-log line (no prompt, completion or key)."""
    rec.duration_ms = round((time.perf_counter() - t_recv) * 1000.0, 3)
    if rec.outcome == "pending":
        rec.outcome = "client_disconnected"
    if logger.isEnabledFor(logging.INFO):
        logger.info(
            "request",
            extra={
                "fake_fields": {
                    "provider": state.config.name,
                    "seq": rec.seq,
                    "status": rec.status,
                    "outcome": rec.outcome,
                    "model": rec.model,
                    "stream": rec.stream,
                    "tokens": rec.tokens,
                    "slowdown": rec.slowdown,
                    "planned_ttft_ms": rec.planned_ttft_ms,
                    "ttft_ms": rec.ttft_ms,
                    "duration_ms": rec.duration_ms,
                }
            },
        )


async def _hang(request: web.Request, state: ProviderState) -> None:
    """Never answer; return once the client has gone or the server shuts down.

    Polling the transport (cheap, 10 Hz) frees the handler when the client gives
    up even if the runner was built without ``handler_cancellation``; the
    shutdown event lets ``runner.cleanup()`` finish promptly.
    """
    while not state.shutdown.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.shutdown.wait(), _HANG_POLL_S)


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return ""


async def handle_chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``: validate, inject failures, then generate."""
    state = request.app[STATE_KEY]
    cfg = state.config
    t_recv = time.perf_counter()
    lt_recv = asyncio.get_running_loop().time()
    now_s = state.now_s()
    auth_present, auth_ok = _check_auth(request, cfg.expected_api_key)
    rec = RecordedRequest(
        seq=state.next_seq(),
        time=time.time(),
        t=now_s,
        method=request.method,
        path=request.path,
        headers=_safe_headers(request),
        auth_present=auth_present,
        auth_ok=auth_ok,
        peer=_peer(request),
    )
    state.records.append(rec)
    state.total_received += 1
    try:
        return await _serve_chat(request, state, cfg, rec, now_s, lt_recv)
    finally:
        _finish(state, rec, t_recv)


async def _serve_chat(
    request: web.Request,
    state: ProviderState,
    cfg: FakeProviderConfig,
    rec: RecordedRequest,
    now_s: float,
    lt_recv: float,
) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    raw = await request.read()
    body: Any = None
    parse_error: str | None = None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        parse_error = (
            f"We could not parse the JSON body of your request. ({exc.__class__.__name__})"
        )
    rec.body = body
    if isinstance(body, dict):
        model = body.get("model")
        rec.model = model if isinstance(model, str) else None
        rec.stream = body.get("stream") is True

    # Scripted incidents first: an outage does not care about the request.
    fail: Incident | None = None
    drop: Incident | None = None
    fault: Incident | None = None  # role_drop, truncate or error_event
    hang = refuse = False
    factor = 1.0
    for inc in state.incidents:
        if not inc.active_at(now_s):
            continue
        if inc.kind == "refuse":
            refuse = True
        elif inc.kind == "hang":
            hang = True
        elif inc.kind == "fail":
            fail = fail or inc
        elif inc.kind == "drop":
            drop = drop or inc
        elif inc.kind in ("role_drop", "truncate", "error_event"):
            fault = fault or inc
        else:
            factor *= inc.factor
    rec.slowdown = factor
    if refuse:
        rec.outcome = "refused"
        _kill_connection(request)
        return web.Response(status=500)
    if hang:
        rec.outcome = "hang"
        await _hang(request, state)
        _kill_connection(request)
        return web.Response(status=500)
    if fail is not None:
        rec.status, rec.outcome = fail.status, "error"
        headers = None
        if fail.status == 429:
            headers = {"Retry-After": str(math.ceil(cfg.retry_after_s))}
        return _error(
            fail.status, "Injected incident failure.", _status_type(fail.status), headers=headers
        )

    if cfg.expected_api_key is not None and not rec.auth_ok:
        rec.status, rec.outcome = 401, "unauthorized"
        return _unauthorized()

    # Validation like a real provider's (the caller's fault → 4xx, not retried).
    def bad(message: str, param: str | None = None) -> web.Response:
        rec.status, rec.outcome = 400, "bad_request"
        return _error(400, message, "invalid_request_error", None, param)

    if parse_error is not None:
        return bad(parse_error)
    if not isinstance(body, dict):
        return bad("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return bad("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return bad("'messages' is a required property and must be a non-empty array", "messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        return bad("'stream' must be a boolean", "stream")
    max_tokens: Any = body.get("max_completion_tokens")
    param = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, param = body.get("max_tokens"), "max_tokens"
    explicit_limit = max_tokens is not None
    if max_tokens is None:
        max_tokens = cfg.default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        return bad(f"'{param}' must be an integer >= 1", param)
    if max_tokens > _MAX_TOKENS_CAP:
        return bad(f"'{param}' must be <= {_MAX_TOKENS_CAP}", param)
    if cfg.served_models is not None and model not in cfg.served_models:
        rec.status, rec.outcome = 404, "model_not_found"
        return _error(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
            "model",
        )

    # Random failures, seeded so a run is reproducible.
    rng = state.rng
    if cfg.rate_limit_rate > 0 and rng.random() < cfg.rate_limit_rate:
        rec.status, rec.outcome = 429, "rate_limited"
        retry_after = cfg.retry_after_s
        return _error(
            429,
            "Rate limit reached for requests. Please try again later.",
            "rate_limit_error",
            "rate_limit_exceeded",
            headers={
                "Retry-After": str(math.ceil(retry_after)),
                "retry-after-ms": str(int(retry_after * 1000)),
            },
        )
    if cfg.error_rate > 0 and rng.random() < cfg.error_rate:
        status = cfg.error_status
        rec.status, rec.outcome = status, "error"
        return _error(
            status,
            "The server had an error while processing your request.",
            _status_type(status),
        )

    # Latency model: lognormal TTFT around the median, constant pacing after it.
    if cfg.ttft_sigma > 0 and cfg.ttft_median_ms > 0:
        ttft_s = rng.lognormvariate(math.log(cfg.ttft_median_ms / 1000.0), cfg.ttft_sigma)
    else:
        ttft_s = cfg.ttft_median_ms / 1000.0
    ttft_s *= factor
    interval = (1.0 / cfg.tokens_per_second) * factor if cfg.tokens_per_second > 0 else 0.0
    rec.planned_ttft_ms = round(ttft_s * 1000.0, 3)
    offset = rng.randrange(_VOCAB)
    first_at = lt_recv + ttft_s
    n = max_tokens
    finish_reason = "length" if explicit_limit else "stop"
    prompt_tokens = _estimate_prompt_tokens(messages)
    drop_after = drop.after_tokens if drop is not None else None
    seq = rec.seq
    created = int(time.time())
    completion_id = f"chatcmpl-{cfg.name}-{seq}"
    common_headers = {"x-fake-provider": cfg.name, "x-request-id": completion_id}

    if not stream and fault is not None:
        if fault.kind == "error_event":
            rec.status, rec.outcome = 200, "error_event"
            return web.Response(
                text=json.dumps({"error": _leaky_error(request, fault)}),
                content_type="application/json",
            )
        rec.outcome = "dropped"
        _kill_connection(request)
        return web.Response(status=500)

    if not stream:
        done_at = first_at + (n - 1) * interval
        if drop_after is not None:
            done_at = first_at + min(drop_after, n - 1) * interval
        delay = done_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if drop_after is not None:
            rec.outcome = "dropped"
            _kill_connection(request)
            return web.Response(status=500)
        text = "".join(
            _FIRST_TEXT[offset] if i == 0 else _NEXT_TEXT[(offset + i) % _VOCAB] for i in range(n)
        )
        rec.status, rec.outcome, rec.tokens = 200, "ok", n
        rec.ttft_ms = round((loop.time() - lt_recv) * 1000.0, 3)
        payload = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": _usage(prompt_tokens, n),
        }
        return web.Response(
            text=json.dumps(payload, separators=(",", ":")),
            content_type="application/json",
            headers=common_headers,
        )

    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    resp = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            **common_headers,
        },
    )
    # Headers go out at once (like real providers); the body starts at TTFT.
    rec.status = 200
    try:
        await resp.prepare(request)
        head = b"".join(
            (
                b'data: {"id":"',
                completion_id.encode(),
                b'","object":"chat.completion.chunk","created":',
                str(created).encode(),
                b',"model":',
                json.dumps(model).encode(),
                b',"choices":[{"index":0,"delta":',
            )
        )
        tail = b',"logprobs":null,"finish_reason":null}]'
        tail += b',"usage":null}\n\n' if include_usage else b"}\n\n"
        buf: list[bytes] = []
        write = resp.write
        stop_after = fault.after_tokens if fault is not None else None
        if fault is not None and fault.kind in ("role_drop", "truncate"):
            await asyncio.sleep(max(0.0, first_at - loop.time()))
            await write(head + b'{"role":"assistant","content":""}' + tail)
            if fault.kind == "role_drop":
                rec.outcome = "dropped"
                _kill_connection(request)
                return resp
        one_write = cfg.stream_in_one_write and fault is None and drop_after is None
        if one_write:  # everything once the last token would be ready, in one write
            await asyncio.sleep(max(0.0, first_at + (n - 1) * interval - loop.time()))
            first_at, interval = loop.time(), 0.0
        for i in range(n):
            if i == stop_after:
                assert fault is not None
                if buf:
                    await write(b"".join(buf))
                if fault.kind == "error_event":
                    event = json.dumps({"error": _leaky_error(request, fault)})
                    await write(b"data: " + event.encode() + b"\n\n")
                rec.outcome = fault.kind
                await resp.write_eof()
                return resp
            due = first_at + i * interval
            if due > loop.time():
                if buf:
                    await write(b"".join(buf))
                    buf.clear()
                await asyncio.sleep(due - loop.time())
            if i == drop_after:
                if buf:
                    await write(b"".join(buf))
                rec.outcome = "dropped"
                _kill_connection(request)
                return resp
            if i == 0:
                buf.append(
                    head + b'{"role":"assistant","content":' + _FIRST_JSON[offset] + b"}" + tail
                )
                # ttft_ms is when the first content token is handed to the socket.
                if not one_write:
                    await write(b"".join(buf))
                    buf.clear()
                rec.ttft_ms = round((loop.time() - lt_recv) * 1000.0, 3)
            else:
                buf.append(head + b'{"content":' + _NEXT_JSON[(offset + i) % _VOCAB] + b"}" + tail)
            rec.tokens = i + 1
        if drop_after is not None:  # drop after all tokens: no finish chunk, no [DONE]
            if buf:
                await write(b"".join(buf))
            rec.outcome = "dropped"
            _kill_connection(request)
            return resp
        end = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        final = b"".join(
            (head, b'{},"logprobs":null,"finish_reason":"', finish_reason.encode(), b'"}]', end)
        )
        buf.append(final)
        if include_usage:
            usage_chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage(prompt_tokens, n),
            }
            usage_json = json.dumps(usage_chunk, separators=(",", ":")).encode()
            buf.append(b"data: " + usage_json + b"\n\n")
        buf.append(_SSE_DONE)
        await write(b"".join(buf))
        if cfg.done_to_eof_ms > 0:
            await asyncio.sleep(cfg.done_to_eof_ms / 1000.0)
        await resp.write_eof()
        rec.outcome = "ok"
    except ConnectionError:
        rec.outcome = "client_disconnected"
    return resp


def _leaky_error(request: web.Request, fault: Incident) -> dict[str, Any]:
    """An error object quoting the caller's Authorization header, as careless providers do."""
    auth = request.headers.get("Authorization", "")
    if fault.status in (401, 403):
        message = f"Invalid API key in header: {auth}"
    else:
        message = f"Internal error while serving request authorized by {auth}"
    return {"message": message, "type": _status_type(fault.status), "code": fault.status}


async def handle_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: the served models (empty when any model is accepted)."""
    state = request.app[STATE_KEY]
    cfg = state.config
    if cfg.expected_api_key is not None and not _check_auth(request, cfg.expected_api_key)[1]:
        return _unauthorized()
    data = [
        {"id": m, "object": "model", "created": 0, "owned_by": cfg.name}
        for m in (cfg.served_models or ())
    ]
    return web.json_response({"object": "list", "data": data})


async def handle_healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: liveness of the fake itself (unaffected by incidents)."""
    return web.json_response({"status": "ok", "name": request.app[STATE_KEY].config.name})


async def handle_get_requests(request: web.Request) -> web.Response:
    """``GET /_fake/requests[?limit=N]``: the recorded requests, oldest first."""
    state = request.app[STATE_KEY]
    records = list(state.records)
    limit = request.query.get("limit")
    if limit is not None:
        try:
            n = int(limit)
        except ValueError:
            return _error(400, "limit must be an integer", "invalid_request_error")
        records = records[-n:] if n > 0 else []
    return web.json_response(
        {
            "object": "list",
            "data": [r.to_dict() for r in records],
            "total_received": state.total_received,
            "record_limit": state.records.maxlen,
        }
    )


async def handle_reset(request: web.Request) -> web.Response:
    """``POST /_fake/reset``: clear the record, restore configured incidents and config."""
    request.app[STATE_KEY].reset()
    return web.json_response({"status": "ok"})


async def handle_add_incident(request: web.Request) -> web.Response:
    """``POST /_fake/incidents``: add one incident.

    ``duration_s``/``start_in_s`` are relative to now; ``start_s``/``end_s`` to server start.
    """
    state = request.app[STATE_KEY]
    try:
        data = await request.json()
        incident = Incident.from_dict(data, now_s=state.now_s())
    except (ValueError, TypeError) as exc:
        return _error(400, f"bad incident: {exc}", "invalid_request_error")
    state.add_incident(incident)
    return web.json_response(incident.to_dict(), status=201)


async def handle_list_incidents(request: web.Request) -> web.Response:
    """``GET /_fake/incidents``: every incident and whether it is active now."""
    state = request.app[STATE_KEY]
    now = state.now_s()
    return web.json_response(
        {
            "now_s": now,
            "data": [{**i.to_dict(), "active": i.active_at(now)} for i in state.incidents],
        }
    )


async def handle_clear_incidents(request: web.Request) -> web.Response:
    """``DELETE /_fake/incidents``: remove all incidents, configured ones included."""
    request.app[STATE_KEY].clear_incidents()
    return web.json_response({"status": "ok"})


async def handle_get_config(request: web.Request) -> web.Response:
    """``GET /_fake/config``: current config (never the key) and uptime."""
    state = request.app[STATE_KEY]
    return web.json_response({**state.config.public_dict(), "uptime_s": state.now_s()})


async def handle_update_config(request: web.Request) -> web.Response:
    """``POST /_fake/config``: change tunables at runtime (e.g. the demo's sliders)."""
    state = request.app[STATE_KEY]
    try:
        data = await request.json()
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        state.update_config(**data)
    except (ValueError, TypeError) as exc:
        return _error(400, f"bad config update: {exc}", "invalid_request_error")
    return web.json_response({**state.config.public_dict(), "uptime_s": state.now_s()})


def build_app(
    config: FakeProviderConfig | None = None, clock: Clock = time.monotonic
) -> web.Application:
    """Build the aiohttp application for one fake provider.

    ``clock`` only drives incident windows (and the records' ``t``); pacing uses
    the event loop's real time, since a fake clock cannot make bytes arrive later.
    Incident times count from when this function is called.
    """
    config = config or FakeProviderConfig()
    state = ProviderState(
        config=config,
        clock=clock,
        t0=clock(),
        initial_config=config,
        rng=random.Random(config.seed),
        incidents=list(config.incidents),
        records=deque(maxlen=config.record_limit),
    )
    app = web.Application()
    app[STATE_KEY] = state

    async def _on_shutdown(_app: web.Application) -> None:
        # Releases hung handlers so the runner's cleanup does not wait for them.
        state.shutdown.set()

    app.on_shutdown.append(_on_shutdown)
    app.router.add_post("/v1/chat/completions", handle_chat_completions)
    app.router.add_get("/v1/models", handle_models)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/_fake/requests", handle_get_requests)
    app.router.add_post("/_fake/reset", handle_reset)
    app.router.add_get("/_fake/incidents", handle_list_incidents)
    app.router.add_post("/_fake/incidents", handle_add_incident)
    app.router.add_delete("/_fake/incidents", handle_clear_incidents)
    app.router.add_get("/_fake/config", handle_get_config)
    app.router.add_post("/_fake/config", handle_update_config)
    return app
