"""One upstream attempt: the request, its measurement, and the classification of failures.

The classification follows the proto's ErrorClass so the router's health
machine sees the same vocabulary from every sidecar. Which classes may be
retried on another provider is decided here too (``RETRIABLE``): a caller
mistake (400/404/422) would fail the same way everywhere, so it is passed on.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import math
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from router_common.domain import ErrorClass
from router_common.limits import MAX_TOKENS
from router_common.outcome_bounds import fit_outcome, tokens_per_second, values_fit
from router_common.pb import router_pb2
from router_common.routing.cost import UsageCost
from router_common.wire_enums import ERROR_CLASS_TO_WIRE
from sidecar.transport import UpstreamResponse

#: Failures that move on to the next provider (before any byte reached the app: a
#: stream that breaks after its first token is never retried, whatever its class).
RETRIABLE = frozenset(
    {
        ErrorClass.CONNECT,
        ErrorClass.TIMEOUT,
        ErrorClass.RATE_LIMITED,
        ErrorClass.SERVER_ERROR,
        ErrorClass.AUTH,
        ErrorClass.STREAM_ABORT,
    }
)


def classify_status(status: int) -> ErrorClass:
    """HTTP status of a failed response → ErrorClass (as the proto documents it).

    Only a 4xx is the request's fault (passed on to the app as it is). A status
    no OpenAI-compatible API answers a chat request with (1xx, a 2xx other than
    200, a 3xx: redirects are not followed) is the endpoint misbehaving, like a
    5xx: passed on, a 204 or 304 would reach the app as an empty "success".
    """
    if status == 429:
        return ErrorClass.RATE_LIMITED
    if status in (401, 403):
        return ErrorClass.AUTH
    if 400 <= status < 500 and status != 408:
        return ErrorClass.CLIENT_ERROR
    return ErrorClass.SERVER_ERROR


def classify_exception(exc: BaseException, got_headers: bool) -> ErrorClass:
    """A transport exception → ErrorClass; after the headers every break is an abort."""
    if isinstance(exc, TimeoutError):  # asyncio and aiohttp timeouts both subclass it
        return ErrorClass.TIMEOUT
    if got_headers:
        return ErrorClass.STREAM_ABORT
    return ErrorClass.CONNECT


#: errno values that say this process ran short (descriptors, buffers, memory).
_SHORT_HERE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def short_here(exc: BaseException) -> bool:
    """The attempt failed for want of this sidecar's own resources, not the provider's.

    Out of file descriptors (an app holding many connections, a low ``ulimit -n``),
    every attempt failed as ``connect`` and was reported to the router and put the
    provider in a local cooldown: one sidecar's shortage counted against a
    healthy provider for the whole fleet. Such an attempt is not reported and
    cools nothing; the app still gets the failure.
    """
    os_error = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    return isinstance(os_error, OSError) and os_error.errno in _SHORT_HERE


def failure_text(
    exc: BaseException, cls: ErrorClass, connect_timeout_s: float, timeout: str = "timeout"
) -> str:
    """A short description of a transport failure (never the request or the key).

    Says what an operator needs to tell the failures apart: a bare "timeout" was
    given alike to a connection (or TLS handshake: an https URL on a plain port)
    that never completed and to an answer that stopped arriving (``timeout``
    says which wait ran out), and "connect: ClientResponseError" to a provider
    that did answer, with a status line or headers no HTTP parser reads. The
    exception's own text is a fixed parser or OS message, never bytes of the
    request (and the whole attempt text is scrubbed of keys like every routing
    text).
    """
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"connect: not connected within {connect_timeout_s:g}s"
    if cls == ErrorClass.TIMEOUT:
        return timeout
    if isinstance(exc, aiohttp.ClientConnectorError):
        why = exc.os_error.strerror or type(exc.os_error).__name__
        if short_here(exc):
            return f"connect: {why} (in this sidecar, not held against the provider)"
        return f"connect: {why}"
    return f"{cls.value}: {break_text(exc, answered=cls != ErrorClass.CONNECT)}"


def break_text(exc: BaseException, answered: bool) -> str:
    """What broke in a response (``answered``: its headers had come), for ``failure_text``
    and the error event of a stream that broke after its first token."""
    if isinstance(exc, aiohttp.ClientResponseError) and exc.message:
        return f"unreadable response: {exc.message}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the provider closed the connection " + (
            "mid-answer" if answered else "before answering"
        )
    if isinstance(exc, aiohttp.ClientPayloadError):
        if "decode" in str(exc):  # a corrupt gzip or deflate body
            return "the response body does not decode (Content-Encoding)"
        return "the response body broke off"
    return type(exc).__name__


def parse_retry_after(
    value: str | None, now: float | None = None, date: str | None = None
) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None if absent or garbled.

    ``float`` also reads "inf", "nan" and "1e400": no delta-seconds, so garbled
    (an infinite wait once made the app's own Retry-After a 500).

    An HTTP date is counted from the response's own ``Date`` header when it has
    a readable one (``date``), not from this host's clock: both dates are then
    on the provider's clock, so a provider (or this node) whose clock is off by
    hours still means "30 s" when it says 30 s after its own now. Without one,
    from ``now`` (default: this host's wall clock).
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    when = _http_date(value)
    if when is None:
        return None
    reference = _http_date(date) if date else None
    if reference is None:
        reference = time.time() if now is None else now
    return max(0.0, when - reference)


def _http_date(value: str) -> float | None:
    """An HTTP date as Unix seconds; None if garbled."""
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    return None if when is None else when.timestamp()


def upstream_error_message(body: bytes, status: int) -> str:
    """``HTTP <status>: <the provider's error message>`` from an (already redacted) error body."""
    text: str | None = None
    try:
        parsed = orjson.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            text = err["message"]
        elif isinstance(err, str):
            text = err
        elif isinstance(parsed.get("message"), str):
            text = parsed["message"]
    if text is None:
        text = body.decode("utf-8", "replace")
    text = " ".join(text.split())[:200]
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


def usage_count(value: Any) -> int | None:
    """A token count from a provider's ``usage``; None when it is none (then the sidecar
    estimates). A bool, a negative count or one beyond ``MAX_TOKENS`` is garbled:
    taken as it came, ``true`` stopped the outcome report with a TypeError (a 500
    for an answered request) and ``-7`` or ``1e18`` tokens went into the cost."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        return None
    return value


def usage_object(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """OpenAI's ``usage`` from the sidecar's own counts, for an answer whose provider
    sent none (streamed or not: the app reads ``usage`` and ``usage.cost`` either way)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def estimate_output_tokens(choices: list[Any]) -> int:
    """Output tokens of a non-streaming answer whose provider sent no usage: ≈ chars / 4.

    Why: without it such an answer was costed and reported as zero output tokens
    (a stream counts its content chunks instead). Counted: each choice's text,
    refusal, reasoning and tool or function call (name and arguments), the same
    characters-per-token rule as the input estimate.
    """
    chars = 0
    for choice in choices:
        msg = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(msg, dict):
            continue
        for key in ("content", "refusal", "reasoning_content", "reasoning"):
            value = msg.get(key)
            if isinstance(value, str):
                chars += len(value)
            elif isinstance(value, list):
                for part in value:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        chars += len(part["text"])
        calls = msg.get("tool_calls")
        calls = list(calls) if isinstance(calls, list) else []
        calls.append({"function": msg.get("function_call")})
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                for key in ("name", "arguments"):
                    if isinstance(fn.get(key), str):
                        chars += len(fn[key])
    return (chars + 3) // 4


@dataclass(slots=True)
class AttemptRecord:
    """The measurement of one attempt: what the response's ``routing.attempts`` shows
    and what becomes an Outcome for the router. Never holds content or keys."""

    provider: str
    upstream_model: str
    started_at: float  # this node's wall clock, Unix seconds (OutcomeReporter.submit
    # puts it on the router's clock)
    t0: float = field(default_factory=time.perf_counter)
    status: str = "pending"  # ok | error
    http_status: int = 0
    error_class: ErrorClass = ErrorClass.NONE
    error: str | None = None
    ttft_ms: float | None = None
    duration_ms: float = 0.0
    output_tokens: int = 0
    tokens_per_second: float | None = None
    retry_after_s: float | None = None
    #: False when the failure was ours (missing key) or the app's (disconnect):
    #: then the router is not told, so one sidecar's config cannot eject an endpoint.
    report: bool = True
    #: Extra keys for ``routing.attempts`` (hedging: ``hedge``, ``cancelled``, cost).
    extra: dict[str, Any] | None = None
    #: The catalog model this attempt served (a request's fallback models differ).
    model: str = ""
    #: Input tokens as the upstream's usage counted them (None: it sent no usage).
    input_tokens: int | None = None
    #: What the tokens this attempt processed cost (None: it produced none).
    cost: UsageCost | None = None
    #: The cost used estimated token counts (the upstream sent no usage).
    cost_estimated: bool = False
    #: The first token was evidence the router lacks (RankingClient.note_first_token):
    #: the outcome is sent urgently and the cached ranking asked again once delivered.
    evidence: bool = False

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000.0

    def finish_ok(
        self, output_tokens: int, t_first: float | None, generation_seen: bool = True
    ) -> None:
        """A clean end. Throughput only when tokens were seen arriving after the first one.

        ``generation_seen`` is False when every token came in the read that
        held the first: the time from there to the end is this process's own
        relaying, not the provider generating, so no throughput is reported
        (rather than an absurd rate the router would reject).
        """
        end = time.perf_counter()
        self.status = "ok"
        self.error_class = ErrorClass.NONE
        self.duration_ms = (end - self.t0) * 1000.0
        self.output_tokens = output_tokens
        if generation_seen and t_first is not None and output_tokens > 1:
            self.tokens_per_second = tokens_per_second(output_tokens, end - t_first)

    def finish_error(
        self, cls: ErrorClass, message: str, http_status: int = 0, output_tokens: int = 0
    ) -> None:
        self.status = "error"
        self.error_class = cls
        self.error = message[:300]
        if http_status:
            self.http_status = http_status
        self.duration_ms = self.elapsed_ms()
        self.output_tokens = output_tokens

    @property
    def retriable(self) -> bool:
        return self.status == "error" and self.error_class in RETRIABLE

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "provider": self.provider,
            "status": self.status,
            "http_status": self.http_status,
            "error_class": self.error_class.value,
            "duration_ms": round(self.duration_ms, 3),
        }
        if self.error:
            out["error"] = self.error
        if self.ttft_ms is not None:
            out["ttft_ms"] = round(self.ttft_ms, 3)
        if self.output_tokens:
            out["output_tokens"] = self.output_tokens
        if self.tokens_per_second is not None:
            out["tokens_per_second"] = round(self.tokens_per_second, 2)
        if self.retry_after_s is not None:
            out["retry_after_s"] = self.retry_after_s
        if self.model:
            out["model"] = self.model
        if self.input_tokens is not None:
            out["input_tokens"] = self.input_tokens
        if self.cost is not None:
            out["cost_usd"] = round(self.cost.total, 12)
        if self.extra:
            out.update(self.extra)
        return out

    def to_outcome(self, model: str) -> router_pb2.Outcome:
        """The report for the router, fitted to the bounds it accepts (``fit_outcome``).

        Whatever this process measured, the router never has to reject it.
        """
        msg = router_pb2.Outcome(
            model=model,
            provider=self.provider,
            started_at=self.started_at,
            success=self.status == "ok",
            error_class=ERROR_CLASS_TO_WIRE[self.error_class],
            http_status=self.http_status,
            output_tokens=self.output_tokens,
            duration_ms=self.duration_ms,
        )
        if self.ttft_ms is not None:
            msg.ttft_ms = self.ttft_ms
        if self.tokens_per_second is not None:
            msg.tokens_per_second = self.tokens_per_second
        if self.retry_after_s is not None:
            msg.retry_after_seconds = self.retry_after_s
        if values_fit(
            self.duration_ms,
            self.output_tokens,
            self.ttft_ms,
            self.tokens_per_second,
            self.retry_after_s,
        ):
            return msg
        return fit_outcome(msg)


@dataclass(slots=True)
class UpstreamError:
    """A failed response's status and (redacted, truncated) body, to pass on if it is the last."""

    status: int
    body: bytes
    content_type: str


def upstream_headers(key: str | None, stream: bool) -> CIMultiDictProxy[str]:
    """Headers for the provider: its key, JSON, and no compression (we parse the stream).

    Built once per (key, stream) and shared, read-only: aiohttp copies a
    multidict it is given as it is, where a plain dict is converted first on
    every request. Keys come from this process's environment, so the cache
    holds a handful of entries (bounded all the same).
    """
    cached = _HEADERS.get((key, stream))
    if cached is not None:
        return cached
    headers = CIMultiDict(
        {
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",
            "Accept": "text/event-stream" if stream else "application/json",
        }
    )
    if key:
        headers["Authorization"] = f"Bearer {key}"
    frozen = CIMultiDictProxy(headers)
    if len(_HEADERS) < 256:
        _HEADERS[(key, stream)] = frozen
    return frozen


_HEADERS: dict[tuple[str | None, bool], CIMultiDictProxy[str]] = {}


async def read_error_body(resp: UpstreamResponse, limit: int) -> bytes:
    """Up to ``limit`` bytes of an error body (the caller redacts it before any use)."""
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(5.0):
            while size < limit:
                chunk = await resp.content.read(limit - size)
                if not chunk:
                    break
                parts.append(chunk)
                size += len(chunk)
    except (TimeoutError, aiohttp.ClientError):
        pass
    return b"".join(parts)
