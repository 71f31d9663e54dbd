"""Turns wire outcomes into domain Outcomes, rejecting junk item by item.

Outcomes come from every sidecar in the fleet; one buggy or hostile client must
not poison the sketches (a NaN TTFT would break every quantile) or create state
(an outcome for a made-up model must not allocate a window). So each item is
checked against physical bounds and the current catalog before anything is
stored, and a rejection names the field that was wrong.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

from router_common.domain import EndpointKey, ErrorClass
from router_common.limits import (
    MAX_FUTURE_SKEW_S,
    MAX_MODEL_ID_LEN,
    MAX_NAME_LEN,
    MAX_OUTCOME_AGE_S,
)
from router_common.outcome_bounds import outcome_value_problem
from router_common.pb import router_pb2
from router_common.wire_enums import ERROR_CLASS_FROM_WIRE
from router_service.model import Outcome


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one outcome was refused; ``field`` names the offending field."""

    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}"


def validate_outcome(
    msg: router_pb2.Outcome, known: Collection[EndpointKey], now: float
) -> Outcome | Rejection:
    """Return the domain Outcome, or a Rejection naming what was wrong."""
    if len(msg.model) > MAX_MODEL_ID_LEN:
        return Rejection("model", f"longer than {MAX_MODEL_ID_LEN} characters")
    if len(msg.provider) > MAX_NAME_LEN:
        return Rejection("provider", f"longer than {MAX_NAME_LEN} characters")
    key = EndpointKey(msg.model, msg.provider)
    if key not in known:
        return Rejection("model/provider", f"endpoint {key} is not in the catalog")
    started = msg.started_at or now
    if (
        not math.isfinite(started)
        or not now - MAX_OUTCOME_AGE_S <= started <= now + MAX_FUTURE_SKEW_S
    ):
        return Rejection("started_at", f"must be within the last day (router clock {now:.0f})")
    error_class = _error_class(msg)
    if isinstance(error_class, Rejection):
        return error_class
    checks: list[Rejection | None] = []
    value_problem = outcome_value_problem(msg)  # the rule the sidecar fits its outcomes to
    if value_problem is not None:
        checks.append(Rejection(*value_problem))
    if msg.http_status and not 100 <= msg.http_status <= 599:
        checks.append(Rejection("http_status", f"must be 0 or 100..599, got {msg.http_status}"))
    elif msg.success and msg.http_status and not 200 <= msg.http_status <= 299:
        checks.append(
            Rejection("http_status", f"{msg.http_status} contradicts success=true (0 or 200..299)")
        )
    for problem in checks:
        if problem is not None:
            return problem
    return Outcome(
        endpoint=key,
        timestamp=started,
        success=msg.success,
        error_class=error_class,
        http_status=msg.http_status,
        ttft_ms=msg.ttft_ms if msg.HasField("ttft_ms") else None,
        tokens_per_second=msg.tokens_per_second if msg.HasField("tokens_per_second") else None,
        output_tokens=msg.output_tokens,
        duration_ms=msg.duration_ms,
        retry_after_s=msg.retry_after_seconds if msg.HasField("retry_after_seconds") else None,
    )


def _error_class(msg: router_pb2.Outcome) -> ErrorClass | Rejection:
    if msg.error_class == router_pb2.ERROR_CLASS_UNSPECIFIED:
        if msg.success:
            return ErrorClass.NONE
        return Rejection("error_class", "required when success is false")
    error_class = ERROR_CLASS_FROM_WIRE.get(msg.error_class)
    if error_class is None:
        return Rejection("error_class", f"unknown value {msg.error_class}")
    if msg.success != (error_class is ErrorClass.NONE):
        return Rejection(
            "error_class", f"{error_class.value} contradicts success={str(msg.success).lower()}"
        )
    return error_class
