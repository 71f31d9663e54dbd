"""Values in error messages, written as JSON would write them.

Callers in any language read the router's and the sidecar's error texts, so a
value is never a Python repr (``nan``, ``['groq']``, ``-1.0``, ``'x'``). The
rules, stated once here and in the README ("Errors"):

* strings are JSON strings (``"groq"``), cut to ``max_chars`` characters with
  ``… (N characters)`` after the closing quote when longer;
* numbers as JavaScript's ``JSON.stringify`` writes them: ``-1`` not ``-1.0``,
  ``0.5``, ``0.000001`` not ``1e-06``, ``1e+21``;
* non-finite doubles as the proto3 JSON mapping writes them: ``"NaN"``,
  ``"Infinity"``, ``"-Infinity"`` (plain JSON has no such numbers);
* booleans ``true``/``false``, lists ``["a", "b"]``, objects ``{"a": 1}``, None
  ``null``; a list or object shows its first ``MAX_SHOWN_ENTRIES`` entries, then
  ``…`` and ``(N entries)`` after the closing bracket, and nesting deeper than
  ``MAX_SHOWN_DEPTH`` is ``[…]`` / ``{…}``, so a message about a huge value stays small.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping
from decimal import Decimal

#: Characters of one string value shown in a message (names are at most 128).
MAX_SHOWN_CHARS = 64

#: Entries of one list or object shown in a message.
MAX_SHOWN_ENTRIES = 8


#: Levels of nested lists and objects shown; deeper ones are ``[…]`` / ``{…}``.
MAX_SHOWN_DEPTH = 4


def as_json(value: object, max_chars: int = MAX_SHOWN_CHARS, _depth: int = 0) -> str:
    """``value`` in JSON notation, for an error message (see the module docstring)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, str):
        if len(value) > max_chars:
            return f"{json.dumps(value[:max_chars])}… ({len(value)} characters)"
        return json.dumps(value)
    if isinstance(value, Mapping):
        if _depth == MAX_SHOWN_DEPTH:
            return "{…}"
        items = [
            f"{as_json(str(k), max_chars)}: {as_json(v, max_chars, _depth + 1)}"
            for k, v in itertools.islice(value.items(), MAX_SHOWN_ENTRIES)
        ]
        return _bracketed("{", items, "}", len(value))
    if isinstance(value, Iterable):
        if _depth == MAX_SHOWN_DEPTH:
            return "[…]"
        entries = list(value)
        items = [as_json(v, max_chars, _depth + 1) for v in entries[:MAX_SHOWN_ENTRIES]]
        return _bracketed("[", items, "]", len(entries))
    return json.dumps(str(value))


def _bracketed(open_: str, items: list[str], close: str, total: int) -> str:
    if total > len(items):
        return f"{open_}{', '.join([*items, '…'])}{close} ({total} entries)"
    return f"{open_}{', '.join(items)}{close}"


def _number(value: float) -> str:
    """ECMAScript's Number::toString (what ``JSON.stringify`` writes).

    The shortest digits that round-trip (Python's ``repr`` finds the same ones)
    placed by JavaScript's rule, not Python's: plain decimals for magnitudes from
    1e-6 up to 1e21 (``0.000001``, ``123456789012345680000``: the digits padded
    with zeros, not the binary value's exact expansion), else ``d.ddde±n``.
    """
    if math.isnan(value):
        return '"NaN"'
    if math.isinf(value):
        return '"Infinity"' if value > 0 else '"-Infinity"'
    if value == 0:
        return "0"  # -0 too, as JavaScript writes it
    sign = "-" if value < 0 else ""
    shortest = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, shortest.digits))
    k = len(digits)
    n = int(shortest.exponent) + k  # the value is 0.<digits> x 10**n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        mantissa = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
        text = f"{mantissa}e{'+' if n > 0 else '-'}{abs(n - 1)}"
    return sign + text
