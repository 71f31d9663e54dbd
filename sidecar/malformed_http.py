"""One short log line, not a traceback per request, for HTTP the sidecar cannot parse.

aiohttp answers a request it cannot parse (a header line over 8190 bytes, too
many headers, a bad Content-Length, a bad HTTP version) with a 400 before any
handler or middleware runs, and logs it on ``aiohttp.server`` at ERROR with a
full traceback whose text quotes the raw bytes, which may hold a header value
such as the app's bearer token. An app or a scanner sending such requests in a
loop filled the log with tracebacks. Here each becomes a WARNING ``malformed
HTTP request`` naming the parser error's class as ``cause``, without the text
or traceback, at most once per ``interval_s`` per cause (the count of the ones
left out rides on the next line as ``suppressed``). Errors raised by our own
handlers are left alone: those tracebacks are ours to read.

(The rule is the sidecar's own: ``router_service`` and ``sidecar`` do not
import each other, and the router's HTTP port needs it too.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError

#: Causes remembered (they are exception class names: a handful; bounded anyway).
_MAX_CAUSES = 64


class MalformedHttpLogFilter(logging.Filter):
    """Turns aiohttp's per-request parser tracebacks into rate-limited one-line warnings."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        cause = type(exc).__name__
        now = self._clock()
        last = self._last.get(cause)
        if last is not None and now - last < self.interval_s:
            self._suppressed[cause] = self._suppressed.get(cause, 0) + 1
            return False
        if len(self._last) >= _MAX_CAUSES:
            self._last.clear()
        self._last[cause] = now
        record.msg, record.args = "malformed HTTP request", ()
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        record.cause = cause
        record.suppressed = self._suppressed.pop(cause, 0)
        return True
