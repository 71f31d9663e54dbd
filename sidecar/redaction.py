"""The one rule that keeps provider keys in: no byte that leaves the sidecar contains one.

Every path by which upstream-derived bytes leave the sidecar goes through
``KeyRedactor.scrub``: error bodies, error events before or after the first
token, relayed stream bytes, the ``routing`` object, log lines and outcome
reports. Providers echo keys whole ("Bearer sk-...") or in part ("sk-abc...wxyz"),
so each key is cut in halves too; any occurrence of a whole key contains both
halves, which is why searching the halves alone is enough to know whether a
block needs rewriting.

A key also leaves in disguise unless its encodings are searched too (a
secrets audit found each one reaching the app): base64 (a provider echoing
``Authorization`` Basic-style or in a debug field; the app decodes it back),
percent-encoding (a key with ``+``, ``/`` or ``=`` echoed from a URL), and JSON
escapes (``\\u0073k-…`` or ``\\/`` in a relayed stream chunk: the sidecar relays
those bytes as they are, the app's JSON parser turns them back into the key).
Base64 and percent-encoded forms are fixed byte strings, searched like the key;
a JSON-escaped form can escape any character, so it is matched by one regular
expression, run only on blocks holding ``\\u`` or ``\\/``.

The check on relayed bytes is a plain ``bytes in`` per needle per forwarded
block (C speed, no allocation when nothing matches); ``bench/bench_sidecar.py``
measures it against a relay without it.
"""

from __future__ import annotations

import base64
import logging
import re
import urllib.parse
from collections.abc import Iterable

MARK = b"[REDACTED]"

#: Keys shorter than this are cut whole only: halves of a short key are common
#: substrings ("sk-a") and would mangle ordinary text.
_MIN_SPLIT_LEN = 16

#: Keys remembered (their number comes from the catalog; bounded anyway).
_MAX_KEYS = 1024


class KeyRedactor:
    """The provider keys in use and the function that removes them from bytes."""

    __slots__ = ("_escaped", "_keys", "_needles", "_single")

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys: set[str] = set()
        #: ``only(key)`` redactors, built once per key.
        self._single: dict[str, KeyRedactor] = {}
        #: Longest first, so a whole key is replaced before its halves.
        self._needles: tuple[bytes, ...] = ()
        #: Any JSON-escaped spelling of a key or a half (None: no key yet).
        self._escaped: re.Pattern[bytes] | None = None
        for key in keys:
            self.add(key)

    def add(self, key: str | None) -> None:
        """Remember a key read from the environment (empty or known keys are ignored)."""
        if not key or key in self._keys or len(self._keys) >= _MAX_KEYS:
            return
        self._keys.add(key)
        needles = set(self._needles)
        raw = key.encode()
        for part in _parts(raw):
            needles.add(part)
            needles.update(_percent_encoded(part))
            needles.update(_json_string(part))
        needles.update(_base64_cores(raw))
        self._needles = tuple(sorted(needles, key=len, reverse=True))
        # Every needle, base64 ones included: PHP's json_encode writes "/" as "\/".
        self._escaped = re.compile(b"|".join(_json_escaped(n) for n in self._needles))

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
        if (
            self._escaped is not None
            and b"\\" in data  # one memchr; most blocks stop here
            and _ASCII_ESCAPE.search(data) is not None
        ):
            # Escaped ASCII (Go writes <, > and & as \u003c..., PHP "/" as "\/"):
            # decoded, searched like plain bytes, and only when a needle shows is the
            # (slow) pattern of every escaped spelling run over the original.
            view = _ASCII_ESCAPE.sub(_unescape, data)
            if any(needle in view for needle in self._needles):
                data = self._escaped.sub(MARK, data)
        return data

    def scrub_text(self, text: str) -> str:
        """``scrub`` for text (error messages, log fields)."""
        if not self._needles:
            return text
        raw = text.encode("utf-8", "surrogatepass")
        clean = self.scrub(raw)
        return text if clean is raw else clean.decode("utf-8", "replace")


_EMPTY = KeyRedactor()

#: Base64 forms shorter than this are not searched: too short to be told from
#: other text (a key under 8 bytes is still searched as itself). 8 base64
#: characters are 48 bits: a chance match in relayed text is negligible.
_MIN_BASE64_CORE = 8


def _parts(raw: bytes) -> list[bytes]:
    """What is searched for a key: the whole of a short one, else its halves."""
    if len(raw) < _MIN_SPLIT_LEN:
        return [raw]
    half = len(raw) // 2
    return [raw[:half], raw[half:]]


def _percent_encoded(part: bytes) -> set[bytes]:
    """``part`` as a URL would carry it, when that differs (``+``, ``/``, ``=``...)."""
    text = part.decode("utf-8", "surrogateescape")
    forms = {urllib.parse.quote(text, safe=""), urllib.parse.quote_plus(text, safe="")}
    forms |= {_PERCENT.sub(lambda m: m.group(0).lower(), f) for f in forms}  # %2b as %2B
    out = {f.encode() for f in forms}
    out.discard(part)
    return out


_PERCENT = re.compile(r"%[0-9A-F]{2}")


def _json_string(part: bytes) -> set[bytes]:
    """``part`` inside a JSON string as any encoder writes it, when that differs: a key
    holding ``"`` or a backslash (other escapes are the regular expression's)."""
    written = part.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return set() if written == part else {written}


def _base64_cores(raw: bytes) -> set[bytes]:
    """The base64 characters that spell ``raw`` wherever it sits in the encoded text.

    Base64 turns each 3 bytes into 4 characters, so the key's encoding depends on
    its offset modulo 3 (``Bearer <key>`` puts it at 7). For each offset, the
    characters of the groups made of key bytes only are the same whatever
    surrounds the key; both alphabets (standard and URL-safe).
    """
    cores: set[bytes] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        first = 1 if offset else 0
        last = (offset + len(raw)) // 3
        core = encoded[4 * first : 4 * last]
        if len(core) >= _MIN_BASE64_CORE:
            cores.add(core)
            cores.add(core.replace(b"+", b"-").replace(b"/", b"_"))
    return cores


#: A JSON escape that can spell a key's character: ``\\u0000``..``\\u007f``, ``\\/``.
#: Non-ASCII escapes (``\\u00e9``, ``\\u4e2d``: text from an encoder writing
#: ASCII-only JSON) cannot, and do not wake the search.
_ASCII_ESCAPE = re.compile(rb"\\u00[0-7][0-9a-fA-F]|\\/")


def _unescape(match: re.Match[bytes]) -> bytes:
    text = match.group()
    return b"/" if text == b"\\/" else bytes((int(text[2:], 16),))


def _json_escaped(part: bytes) -> bytes:
    """A pattern for ``part`` with any of its ASCII characters written as a JSON escape
    (``\\u0073``, either case of hex digit, ``\\/``, ``\\"``, ``\\\\``)."""
    out: list[bytes] = []
    for byte in part:
        char = bytes((byte,))
        if byte >= 0x80:
            out.append(re.escape(char))
            continue
        hex_digits = b"".join(
            b"[" + d + d.upper() + b"]" if d.isalpha() else d for d in _hex_pairs(byte)
        )
        alternatives = [re.escape(char), rb"\\u00" + hex_digits]
        if char in b'/"\\':
            alternatives.append(rb"\\" + re.escape(char))
        out.append(b"(?:" + b"|".join(alternatives) + b")")
    return b"".join(out)


def _hex_pairs(byte: int) -> list[bytes]:
    return [bytes((c,)) for c in b"%02x" % byte]


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
