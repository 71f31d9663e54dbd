"""Log lines a caller can provoke, rate-limited: one line per cause per interval.

Why: anything an outside party can trigger at will (a corrupt gRPC message, an
HTTP request aiohttp cannot parse, a failed accept under a file-descriptor
flood) must not be able to flood the log, nor put its raw bytes there (a
header line may hold a token). The router and the sidecar both face that, so
the rule lives here, once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

__all__ = [
    "LogLimiter",
    "MalformedHttpLogFilter",
    "RateLimitedLogFilter",
    "install_accept_error_limit",
]

#: Causes remembered before the table is reset: causes are fixed strings (a
#: method and a parser error's class name), so this is only a safety net.
_MAX_CAUSES = 1_000


class LogLimiter:
    """At most one log line per ``interval_s`` per cause; the rest are counted and
    reported (as ``suppressed``) with the next line for that cause."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, cause: str) -> int | None:
        """None to stay silent, else how many lines for this cause were suppressed."""
        now = self.clock()
        last = self._last.get(cause)
        if last is not None and now - last < self.interval_s:
            self._suppressed[cause] = self._suppressed.get(cause, 0) + 1
            return None
        if len(self._last) > _MAX_CAUSES:
            self._last.clear()
        self._last[cause] = now
        return self._suppressed.pop(cause, 0)

    def warning(self, logger: logging.Logger, message: str, cause: str, **extra: Any) -> None:
        suppressed = self.allow(cause)
        if suppressed is not None:
            logger.warning(message, extra={"cause": cause, "suppressed": suppressed, **extra})


class MalformedHttpLogFilter(logging.Filter):
    """aiohttp's ``Error handling request`` for a request it cannot parse, made one line.

    aiohttp answers a request it cannot parse (a header line over 8190 bytes,
    too many headers, a bad Content-Length, a bad HTTP version) with a 400
    before any handler or middleware runs, and logs it on ``aiohttp.server`` at
    ERROR with a full traceback whose text quotes the raw bytes. Here it becomes
    a WARNING ``malformed HTTP request`` with the parser error's class as
    ``cause``, without the text or traceback, at most once per interval per
    cause (``LogLimiter``). So does the parser's error met again when aiohttp
    reads the rest of a body that does not decode (corrupt gzip), after the
    handler answered. Errors raised by our own handlers are left alone:
    those tracebacks are ours to read. Install it on ``aiohttp.server``.
    """

    def __init__(self, limiter: LogLimiter | None = None) -> None:
        super().__init__()
        self.limiter = limiter or LogLimiter()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, RequestPayloadError) and isinstance(exc.__cause__, HttpProcessingError):
            # A body that does not decode (corrupt gzip): after the handler's 400,
            # aiohttp reads the rest of the body and meets the parser's error again.
            exc = exc.__cause__
        if not isinstance(exc, HttpProcessingError):
            return True
        cause = type(exc).__name__
        suppressed = self.limiter.allow(f"http:{cause}")
        if suppressed is None:
            return False
        record.msg, record.args = "malformed HTTP request", ()
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        record.cause, record.suppressed = cause, suppressed
        return True


class RateLimitedLogFilter(logging.Filter):
    """Rate-limits a noisy library logger (asyncio's accept errors under EMFILE)."""

    def __init__(self, limiter: LogLimiter, match: tuple[str, ...]) -> None:
        super().__init__()
        self.limiter = limiter
        self.match = match

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        for needle in self.match:
            if needle in text:
                if self.limiter.allow(needle) is None:
                    return False
                record.exc_info = None  # one line, never a traceback
                record.exc_text = None
                return True
        return True


def install_accept_error_limit(limiter: LogLimiter) -> None:
    """asyncio logs every failed accept() (EMFILE) with a traceback; limit it."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, RateLimitedLogFilter) for f in logger.filters):
        logger.addFilter(RateLimitedLogFilter(limiter, ("accept", "Too many open files")))
