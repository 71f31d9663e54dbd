"""Turns wire outcomes into domain Outcomes, rejecting junk item by item.

Outcomes come from every sidecar in the fleet; one buggy or hostile client must
not poison the sketches (a NaN TTFT would break every quantile) or create state
(an outcome for a made-up model must not allocate a window). So each item is
checked against physical bounds and the current catalog before anything is
stored, and a rejection names the field that was wrong.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from router_common.domain import EndpointKey, ErrorClass
from router_common.json_text import as_json
from router_common.limits import (
    MAX_DURATION_MS,
    MAX_FUTURE_SKEW_S,
    MAX_MODEL_ID_LEN,
    MAX_NAME_LEN,
    MAX_OUTCOME_AGE_S,
    MAX_OUTPUT_TOKENS,
    MAX_RETRY_AFTER_S,
    MAX_TOKENS_PER_SECOND,
    MAX_TTFT_MS,
)
from router_common.outcome_bounds import outcome_value_problem, values_fit
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


def _unknown_endpoint(key: EndpointKey, known: Collection[EndpointKey]) -> Rejection:
    """Name the field that does not match the catalog: the model, else the provider."""
    if not any(k.model == key.model for k in known):
        return Rejection("model", f"{as_json(key.model)} is not in the catalog")
    return Rejection(
        "provider", f"endpoint {as_json(str(key))} (provider | model) is not in the catalog"
    )


def validate_outcome(
    msg: router_pb2.Outcome, known: Collection[EndpointKey], now: float
) -> Outcome | Rejection:
    """Return the domain Outcome, or a Rejection naming what was wrong.

    On the ingestion hot path (tens of thousands a second): the common case
    is straight-line comparisons; messages are built only for a rejection.
    """
    model, provider = msg.model, msg.provider
    if len(model) > MAX_MODEL_ID_LEN:
        return Rejection("model", f"at most {MAX_MODEL_ID_LEN} characters, got {len(model)}")
    if len(provider) > MAX_NAME_LEN:
        return Rejection("provider", f"at most {MAX_NAME_LEN} characters, got {len(provider)}")
    key = EndpointKey(model, provider)
    if key not in known:
        return _unknown_endpoint(key, known)
    started = msg.started_at or now
    if not now - MAX_OUTCOME_AGE_S <= started <= now + MAX_FUTURE_SKEW_S:
        return Rejection(
            "started_at",
            f"must be within the last {MAX_OUTCOME_AGE_S:.0f} s and at most "
            f"{MAX_FUTURE_SKEW_S:.0f} s ahead of the router's clock ({now:.0f}), "
            f"got {as_json(started)}",
        )
    error_class = _error_class(msg)
    if isinstance(error_class, Rejection):
        return error_class
    success, status = msg.success, msg.http_status
    if status and not 100 <= status <= 599:
        return Rejection("http_status", f"must be 0 or 100..599, got {status}")
    if success and status and not 200 <= status <= 299:
        return Rejection(
            "http_status", f"{status} contradicts success true (must be 0 or 200..299)"
        )
    duration, output_tokens = msg.duration_ms, msg.output_tokens
    has = msg.HasField
    ttft = msg.ttft_ms if has("ttft_ms") else None
    tps = msg.tokens_per_second if has("tokens_per_second") else None
    retry = msg.retry_after_seconds if has("retry_after_seconds") else None
    if not values_fit(duration, output_tokens, ttft, tps, retry):
        # The rule the sidecar fits its outcomes to (router_common/outcome_bounds.py).
        problem = outcome_value_problem(msg)
        if problem is not None:
            return Rejection(*problem)
    # Positional, in field order: keyword binding would double the cost of the
    # object (model.Outcome says why it is a NamedTuple).
    return Outcome(
        key, started, success, error_class, status, ttft, tps, output_tokens, duration, retry
    )


def _error_class(msg: router_pb2.Outcome) -> ErrorClass | Rejection:
    wire = msg.error_class
    if wire == router_pb2.ERROR_CLASS_UNSPECIFIED:
        if msg.success:
            return ErrorClass.NONE
        return Rejection("error_class", "required when success is false")
    error_class = ERROR_CLASS_FROM_WIRE.get(wire)
    if error_class is None:
        return Rejection("error_class", f"unknown value {wire}")
    if msg.success != (error_class is ErrorClass.NONE):
        name = router_pb2.ErrorClass.Name(wire)
        return Rejection(
            "error_class",
            f"{as_json(name)} contradicts success {as_json(msg.success)}",
        )
    return error_class


class BatchValidator:
    """``validate_outcome`` over a batch, grouping the accepted outcomes by endpoint.

    The ingestion path validates tens of thousands of outcomes a second on the
    serving loop. Here the common case (a catalog endpoint, a recent start,
    a consistent error class and status, values within bounds) is checked in
    one inline pass with the endpoint found in a prebuilt table (no
    ``EndpointKey`` built per outcome: the catalog's own key is used); any
    outcome that fails a check goes to ``validate_outcome``, which finds the
    same answer the slow way and names the field. So the accepted outcomes and
    the rejections are exactly ``validate_outcome``'s, in the same order.
    """

    __slots__ = ("_known", "_table")

    def __init__(self, known: Collection[EndpointKey]) -> None:
        self._known = known
        #: model -> provider -> the catalog's key, for keys ``validate_outcome``
        #: accepts (within the length limits it checks first).
        self._table: dict[str, dict[str, EndpointKey]] = {}
        for key in known:
            if len(key.model) <= MAX_MODEL_ID_LEN and len(key.provider) <= MAX_NAME_LEN:
                self._table.setdefault(key.model, {})[key.provider] = key

    @property
    def known(self) -> Collection[EndpointKey]:
        return self._known

    def validate(
        self,
        messages: Iterable[router_pb2.Outcome],
        now: float,
        first_index: int,
        rejections: list[tuple[int, Rejection]],
        max_rejections: int,
        by_field: Counter[str] | None = None,
    ) -> tuple[list[Outcome], dict[EndpointKey, list[Outcome]], int]:
        """(accepted in order, accepted by endpoint, how many rejected).

        ``by_field``, if given, counts every rejection by the field it names.

        The first ``max_rejections`` rejections go to ``rejections`` as
        (first_index + position, Rejection), as ``RouterCore.record`` reports them.
        """
        table, known = self._table, self._known
        oldest, newest = now - MAX_OUTCOME_AGE_S, now + MAX_FUTURE_SKEW_S
        unspecified = router_pb2.ERROR_CLASS_UNSPECIFIED
        none = ErrorClass.NONE
        from_wire = ERROR_CLASS_FROM_WIRE
        max_duration, max_tokens = MAX_DURATION_MS, MAX_OUTPUT_TOKENS
        max_ttft, max_tps, max_retry = MAX_TTFT_MS, MAX_TOKENS_PER_SECOND, MAX_RETRY_AFTER_S
        accepted: list[Outcome] = []
        by_endpoint: dict[EndpointKey, list[Outcome]] = {}
        rejected = 0
        for offset, msg in enumerate(messages):
            outcome: Outcome | None = None
            providers = table.get(msg.model)
            key = providers.get(msg.provider) if providers is not None else None
            if key is not None:
                started = msg.started_at or now
                success = msg.success
                wire = msg.error_class
                if wire == unspecified:
                    error_class = none if success else None
                else:
                    error_class = from_wire.get(wire)
                    if error_class is not None and success != (error_class is none):
                        error_class = None
                status = msg.http_status
                if (
                    error_class is not None
                    and oldest <= started <= newest
                    and (
                        not status
                        or (100 <= status <= 599 and (not success or 200 <= status <= 299))
                    )
                ):
                    duration, output_tokens = msg.duration_ms, msg.output_tokens
                    # An optional field that reads non-zero is set: HasField only for 0.
                    ttft: float | None = msg.ttft_ms
                    if not ttft and not msg.HasField("ttft_ms"):
                        ttft = None
                    tps: float | None = msg.tokens_per_second
                    if not tps and not msg.HasField("tokens_per_second"):
                        tps = None
                    retry: float | None = msg.retry_after_seconds
                    if not retry and not msg.HasField("retry_after_seconds"):
                        retry = None
                    # values_fit, inline (router_common/outcome_bounds.py).
                    if (
                        0.0 <= duration <= max_duration
                        and 0 <= output_tokens <= max_tokens
                        and (ttft is None or 0.0 <= ttft <= max_ttft)
                        and (tps is None or 0.0 <= tps <= max_tps)
                        and (retry is None or 0.0 <= retry <= max_retry)
                    ):
                        outcome = Outcome(
                            key,
                            started,
                            success,
                            error_class,
                            status,
                            ttft,
                            tps,
                            output_tokens,
                            duration,
                            retry,
                        )
            if outcome is None:
                checked = validate_outcome(msg, known, now)
                if isinstance(checked, Rejection):
                    rejected += 1
                    if by_field is not None:
                        by_field[checked.field] += 1
                    if len(rejections) < max_rejections:
                        rejections.append((first_index + offset, checked))
                    continue
                outcome = checked
            accepted.append(outcome)
            same = by_endpoint.get(outcome.endpoint)
            if same is None:
                by_endpoint[outcome.endpoint] = [outcome]
            else:
                same.append(outcome)
        return accepted, by_endpoint, rejected
