"""Values in error messages, written as JSON would write them.

Callers in any language read the router's and the sidecar's error texts, so a
value is never a Python repr (``nan``, ``['groq']``, ``-1.0``, ``'x'``). The
rules, stated once here and in the README ("Errors"):

* strings are JSON strings (``"groq"``), cut to ``max_chars`` characters with
  ``… (N characters)`` after the closing quote when longer;
* numbers as JavaScript's ``JSON.stringify`` writes them: ``-1`` not ``-1.0``,
  ``0.5``, ``1e+21``;
* non-finite doubles as the proto3 JSON mapping writes them: ``"NaN"``,
  ``"Infinity"``, ``"-Infinity"`` (plain JSON has no such numbers);
* booleans ``true``/``false``, lists ``["a", "b"]``, None ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

#: Characters of one string value shown in a message (names are at most 128).
MAX_SHOWN_CHARS = 64


def as_json(value: object, max_chars: int = MAX_SHOWN_CHARS) -> str:
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
    if isinstance(value, Iterable):
        return "[" + ", ".join(as_json(v, max_chars) for v in value) + "]"
    return json.dumps(str(value))


def _number(value: float) -> str:
    if math.isnan(value):
        return '"NaN"'
    if math.isinf(value):
        return '"Infinity"' if value > 0 else '"-Infinity"'
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)  # shortest round trip, as JavaScript's
    if "e" in text:
        mantissa, exponent = text.split("e")
        sign = "-" if exponent.startswith("-") else "+"
        text = f"{mantissa}e{sign}{int(exponent.lstrip('+-'))}"
    return text
