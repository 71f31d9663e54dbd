"""Which measured values an Outcome may carry: the one rule the router and the sidecar share.

The router rejects an outcome whose value is outside these bounds
(``router_service/outcome_validation.py`` names the field); the sidecar fits
every outcome to them before sending (``sidecar/upstream.py``), so nothing it
reports is refused. A value outside them is a bug or a non-measurement, never
a fact about the provider: an optional measurement is left unset, a required
value (duration, token count) and a wait (``retry_after_seconds``) are capped.
"""

from __future__ import annotations

import math

from router_common.json_text import as_json
from router_common.limits import (
    MAX_DURATION_MS,
    MAX_OUTPUT_TOKENS,
    MAX_RETRY_AFTER_S,
    MAX_TOKENS_PER_SECOND,
    MAX_TTFT_MS,
)
from router_common.pb import router_pb2

#: Fields every Outcome has, and their upper bounds (every lower bound is 0).
REQUIRED_BOUNDS: tuple[tuple[str, float], ...] = (
    ("duration_ms", MAX_DURATION_MS),
    ("output_tokens", MAX_OUTPUT_TOKENS),
)
#: Optional fields (checked only when set), and their upper bounds.
OPTIONAL_BOUNDS: tuple[tuple[str, float], ...] = (
    ("ttft_ms", MAX_TTFT_MS),
    ("tokens_per_second", MAX_TOKENS_PER_SECOND),
    ("retry_after_seconds", MAX_RETRY_AFTER_S),
)
#: Optional fields capped rather than dropped: "wait longer than the bound" keeps its meaning.
_CAPPED_OPTIONAL = frozenset({"retry_after_seconds"})


def bound_problem(value: float, upper: float) -> str | None:
    """Why ``value`` is not acceptable for a field bounded by [0, ``upper``]; None if it is.

    ``value`` may be an int (an int64 field): it is compared and shown exactly."""
    if not math.isfinite(value):
        return f"must be a finite number, got {as_json(value)}"
    if value < 0 or value > upper:
        return f"must be within [0, {as_json(upper)}], got {as_json(value)}"
    return None


def outcome_value_problem(msg: router_pb2.Outcome) -> tuple[str, str] | None:
    """The first (field, problem) of ``msg``'s values outside the bounds, or None."""
    for name, upper in REQUIRED_BOUNDS:
        # The value as sent: an int64 through float() was rounded in the message
        # (2**63 - 1 showed as 9223372036854776000, a number nobody sent).
        problem = bound_problem(getattr(msg, name), upper)
        if problem is not None:
            return name, problem
    for name, upper in OPTIONAL_BOUNDS:
        if msg.HasField(name):
            problem = bound_problem(getattr(msg, name), upper)
            if problem is not None:
                return name, problem
    return None


def values_fit(
    duration_ms: float,
    output_tokens: int,
    ttft_ms: float | None,
    tokens_per_second: float | None,
    retry_after_seconds: float | None,
) -> bool:
    """True when an outcome with these values needs no fitting (plain comparisons:
    the sidecar checks this per request and builds nothing when it holds)."""
    return (
        0.0 <= duration_ms <= MAX_DURATION_MS
        and 0 <= output_tokens <= MAX_OUTPUT_TOKENS
        and (ttft_ms is None or 0.0 <= ttft_ms <= MAX_TTFT_MS)
        and (tokens_per_second is None or 0.0 <= tokens_per_second <= MAX_TOKENS_PER_SECOND)
        and (retry_after_seconds is None or 0.0 <= retry_after_seconds <= MAX_RETRY_AFTER_S)
    )


def fit_outcome(msg: router_pb2.Outcome) -> router_pb2.Outcome:
    """``msg`` changed in place so that ``outcome_value_problem`` finds nothing; returned.

    Required values are capped (NaN becomes 0); optional ones outside the
    bounds are unset, except a wait, which is capped.
    """
    for name, upper in REQUIRED_BOUNDS:
        value = getattr(msg, name)
        if not 0 <= value <= upper:  # NaN fails both comparisons
            setattr(msg, name, type(value)(upper if value > upper else 0))
    for name, upper in OPTIONAL_BOUNDS:
        if msg.HasField(name):
            value = getattr(msg, name)
            if not 0.0 <= value <= upper:
                if name in _CAPPED_OPTIONAL and value > upper:
                    setattr(msg, name, upper)
                else:
                    msg.ClearField(name)
    return msg


def tokens_per_second(tokens: int, seconds: float) -> float | None:
    """Output tokens over ``seconds``, or None when that is no measurement.

    None for no tokens, a zero or negative interval, or a rate above
    ``MAX_TOKENS_PER_SECOND``: such a rate comes from an interval too short
    to have been measured (bytes that arrived together), not from a provider.
    """
    if tokens <= 0 or not seconds > 0.0:
        return None
    rate = tokens / seconds
    return rate if rate <= MAX_TOKENS_PER_SECOND else None
