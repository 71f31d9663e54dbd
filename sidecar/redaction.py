"""The one rule that keeps provider keys in: no byte that leaves the sidecar contains one.

Every path by which upstream-derived bytes leave the sidecar goes through
``KeyRedactor.scrub``: error bodies, error events before or after the first
token, relayed stream bytes, the ``routing`` object, log lines and outcome
reports. Providers echo keys whole ("Bearer sk-...") or in part ("sk-abc...wxyz"),
so each key is cut in halves too; any occurrence of a whole key contains both
halves, which is why searching the halves alone is enough to know whether a
block needs rewriting.

The check on relayed bytes is a plain ``bytes in`` per key half per forwarded
block (C speed, no allocation when nothing matches); ``bench/bench_sidecar.py``
measures it against a relay without it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

MARK = b"[REDACTED]"

#: Keys shorter than this are cut whole only: halves of a short key are common
#: substrings ("sk-a") and would mangle ordinary text.
_MIN_SPLIT_LEN = 16

#: Keys remembered (their number comes from the catalog; bounded anyway).
_MAX_KEYS = 1024


class KeyRedactor:
    """The provider keys in use and the function that removes them from bytes."""

    __slots__ = ("_keys", "_needles", "_single")

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys: set[str] = set()
        #: ``only(key)`` redactors, built once per key.
        self._single: dict[str, KeyRedactor] = {}
        #: Longest first, so a whole key is replaced before its halves.
        self._needles: tuple[bytes, ...] = ()
        for key in keys:
            self.add(key)

    def add(self, key: str | None) -> None:
        """Remember a key read from the environment (empty or known keys are ignored)."""
        if not key or key in self._keys or len(self._keys) >= _MAX_KEYS:
            return
        self._keys.add(key)
        needles = set(self._needles)
        raw = key.encode()
        if len(raw) >= _MIN_SPLIT_LEN:
            half = len(raw) // 2
            needles.update((raw[:half], raw[half:]))
        else:
            needles.add(raw)
        self._needles = tuple(sorted(needles, key=len, reverse=True))

    def only(self, key: str | None) -> KeyRedactor:
        """A redactor for one key: what a relayed stream is checked with.

        A provider can only echo the key it was sent, so the bytes it streams
        are searched for that key alone (two searches per block instead of two
        per configured key); everything else leaving the sidecar is checked
        against every key.
        """
        if not key:
            return _EMPTY
        single = self._single.get(key)
        if single is None:
            self.add(key)
            single = KeyRedactor((key,))
            if len(self._single) < _MAX_KEYS:
                self._single[key] = single
        return single

    def scrub(self, data: bytes) -> bytes:
        """``data`` with every key (and every half of one) replaced by ``[REDACTED]``."""
        for needle in self._needles:
            if needle in data:
                data = data.replace(needle, MARK)
        return data

    def scrub_text(self, text: str) -> str:
        """``scrub`` for text (error messages, log fields)."""
        if not self._needles:
            return text
        raw = text.encode("utf-8", "surrogatepass")
        clean = self.scrub(raw)
        return text if clean is raw else clean.decode("utf-8", "replace")


_EMPTY = KeyRedactor()


class RedactingLogFilter(logging.Filter):
    """Scrubs every log record's message and string ``extra`` fields with the redactor.

    Installed on the sidecar's loggers so that no code path (a library's
    exception text included) can write a key to the log.
    """

    _STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def __init__(self, redactor: KeyRedactor) -> None:
        super().__init__()
        self._r = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        r = self._r
        if record.args:
            record.msg = r.scrub_text(record.getMessage())
            record.args = None
        elif isinstance(record.msg, str):
            record.msg = r.scrub_text(record.msg)
        for name, value in list(record.__dict__.items()):
            if name not in self._STANDARD and isinstance(value, str):
                setattr(record, name, r.scrub_text(value))
        if record.exc_info:  # formatted here, scrubbed, and the raw exception dropped
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_text = r.scrub_text(text)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = r.scrub_text(record.exc_text)
        return True
