"""Structured JSON logging shared by every process in the project.

One JSON object per line on stderr, so log pipelines (Loki, Cloud Logging,
ELK) can index fields without regexes. Callers pass facts as ``extra``; the
rule that prompts, completions and API keys never appear is kept by never
passing them, and the sidecar's tests grep the output to prove it.

``DirectJsonLog`` writes the same lines for a hot path (the sidecar's one
access line per request) without the generic machinery; see its docstring.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
from pythonjsonlogger.json import JsonFormatter

from router_common.json_text import as_json

LEVELS = ("debug", "info", "warning", "error")

#: The handler ``configure_logging`` installed last (``DirectJsonLog`` writes to
#: its stream only while it is the root logger's one handler).
_installed: logging.StreamHandler[Any] | None = None


def configure_logging(level: str = "info", stream=None) -> None:
    """Route the root logger to one JSON line per record."""
    global _installed
    if level.lower() not in LEVELS:
        raise ValueError(f"--log-level must be one of {', '.join(LEVELS)}, got {as_json(level)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _installed = handler


#: Lines ``DirectJsonLog`` holds at most before writing them, whatever the interval.
_MAX_HELD = 1000


class DirectJsonLog:
    """INFO lines with the fields ``configure_logging``'s formatter writes, for a hot path.

    Why: the sidecar writes one access line per request at INFO, the level
    it is deployed with. Through ``logging`` that line cost ~0.07 ms of CPU
    under load (a LogRecord, caller lookup, filters, python-json-logger's
    stdlib ``json``, a ``strftime``, a write and flush): 10 to 15 % of a whole
    proxied request. This encodes the same object (``time``, ``level``,
    ``logger``, ``message``, then the fields) with orjson, reuses the
    formatted second, passes the line through ``scrub`` (the sidecar's key
    redactor, which the handler's filter would otherwise apply), and hands
    the lines of up to ``flush_interval_s`` to the configured stream in one
    write (Envoy's access log does the same, every second by default; at
    most 1,000 lines are held); a line is therefore at most that late, and
    ``flush()`` (called on shutdown) writes what is held.

    It only takes that shortcut while ``configure_logging``'s handler is the
    root logger's only handler and the logger is enabled for INFO; anything
    else (pytest's caplog, an application embedding the sidecar with its own
    handlers) gets an ordinary ``logger.info`` record, so no line is lost.
    """

    __slots__ = ("_held", "_interval", "_logger", "_prefix", "_prefix_at", "_scrub", "_timer")

    def __init__(
        self,
        name: str,
        scrub: Callable[[bytes], bytes] | None = None,
        flush_interval_s: float = 0.1,
    ) -> None:
        self._logger = logging.getLogger(name)
        self._scrub = scrub
        self._interval = flush_interval_s
        self._prefix_at = -1
        self._prefix = ""
        #: (time, message, fields) of the lines not written yet.
        self._held: list[tuple[float, str, dict[str, Any]]] = []
        self._timer: asyncio.TimerHandle | None = None

    def info(self, message: str, fields: dict[str, Any]) -> None:
        """One INFO line: ``message`` and ``fields`` (JSON-encodable values)."""
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handlers = logging.root.handlers
        handler = _installed
        if (
            handler is None
            or len(handlers) != 1
            or handlers[0] is not handler
            or handler.level > logging.INFO
            or not logger.propagate
            or logger.handlers
        ):
            logger.info(message, extra=fields)
            return
        self._held.append((time.time(), message, fields))
        if len(self._held) >= _MAX_HELD:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is None or self._interval <= 0:
                self.flush()
            else:
                self._timer = loop.call_later(self._interval, self.flush)

    def flush(self) -> None:
        """Write the held lines now (to the configured stream, or as records if it changed)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, []
        if not held:
            return
        handler = _installed
        if handler is None or logging.root.handlers != [handler]:
            for _, message, fields in held:  # logging was reconfigured meanwhile
                self._logger.info(message, extra=fields)
            return
        name = self._logger.name
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        text = b"".join(
            dumps(
                {"time": self._time(at), "level": "INFO", "logger": name, "message": msg, **fields},
                option=newline,
            )
            for at, msg, fields in held
        )
        if self._scrub is not None:
            text = self._scrub(text)
        handler.acquire()  # as Handler.handle does: lines from other threads stay whole
        try:
            stream = handler.stream
            stream.write(text.decode())
            stream.flush()
        finally:
            handler.release()

    def _time(self, now: float) -> str:
        """``logging.Formatter``'s default ``asctime`` (local time, milliseconds)."""
        second = int(now)
        if second != self._prefix_at:
            self._prefix_at = second
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._prefix},{int((now - second) * 1000):03d}"
