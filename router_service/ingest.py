"""Applies outcome batches exactly once, within each caller's budget, without starving ranking.

Ranking and ingestion share one event loop. Applying a 1000-outcome batch
costs milliseconds of CPU; four writers at full speed used to run their
batches back to back and every RankProviders call queued behind them. Here
batches are applied by one writer at a time (an ``asyncio.Lock``: the others
wait, which is the backpressure a streaming writer feels) and in chunks of
``CHUNK`` outcomes with a yield to the loop between chunks, so a ranking call
waits for at most one chunk, not for every writer's batch.

A batch is atomic: once its id is checked and its budget taken, it is applied
to the end in a shielded task even if the caller's RPC is cancelled (deadline,
disconnect), and its id is remembered first. So a resent batch is recognised
and acknowledged without being counted twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from router_common.limits import MAX_REJECTIONS_REPORTED, MAX_SENDER_LEN
from router_common.pb import router_pb2
from router_service.callers import CallerLedger
from router_service.core import IngestResult, RouterCore

#: Outcomes applied between two yields to the event loop (~0.2 ms of CPU).
CHUNK = 64


class BatchRefused(Exception):
    """The whole batch is refused; ``code`` names the gRPC status to answer with."""

    def __init__(self, code: str, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class BatchResult:
    result: IngestResult = field(default_factory=IngestResult)
    duplicate: bool = False
    sequence: int | None = None


class Ingestor:
    """One per router: the only path by which outcomes reach RouterCore."""

    def __init__(
        self, core: RouterCore, ledger: CallerLedger, on_ingested: Callable[[], None]
    ) -> None:
        self.core = core
        self.ledger = ledger
        self._on_ingested = on_ingested
        self._lock = asyncio.Lock()

    @staticmethod
    def batch_id(message: router_pb2.RecordOutcomeRequest) -> tuple[str, int] | None:
        """The message's (sender, sequence), None when unset; BatchRefused when invalid."""
        if not message.HasField("batch_id"):
            return None
        sender, sequence = message.batch_id.sender, message.batch_id.sequence
        if not 1 <= len(sender) <= MAX_SENDER_LEN:
            raise BatchRefused(
                "INVALID_ARGUMENT",
                f"batch_id.sender: must be 1..{MAX_SENDER_LEN} characters, got {len(sender)}",
            )
        if sequence < 1:
            raise BatchRefused("INVALID_ARGUMENT", "batch_id.sequence: must be at least 1, got 0")
        return sender, sequence

    async def apply(
        self, caller: str, message: router_pb2.RecordOutcomeRequest, first_index: int
    ) -> BatchResult:
        """Apply one batch (or recognise it as a duplicate). Raises BatchRefused."""
        batch_id = self.batch_id(message)
        outcome = BatchResult(sequence=batch_id[1] if batch_id else None)
        if batch_id is not None and self.ledger.is_duplicate(caller, *batch_id):
            outcome.duplicate = True
            return outcome
        count = len(message.outcomes)
        if not self.ledger.take(caller, count):
            wait = self.ledger.retry_after_s(caller, count)
            raise BatchRefused(
                "RESOURCE_EXHAUSTED",
                f"caller {caller!r} is over its outcome rate limit "
                f"({self.ledger.config.outcomes_per_second:g}/s); retry in {wait:.2f} s",
                wait,
            )
        if batch_id is not None:
            self.ledger.remember(caller, *batch_id)
        task = asyncio.ensure_future(self._apply_locked(caller, message.outcomes, first_index))
        outcome.result = await asyncio.shield(task)
        return outcome

    async def _apply_locked(
        self, caller: str, outcomes: Sequence[router_pb2.Outcome], first_index: int
    ) -> IngestResult:
        total = IngestResult()
        async with self._lock:
            for start in range(0, len(outcomes), CHUNK):
                if start:
                    await asyncio.sleep(0)
                part = self.core.record(outcomes[start : start + CHUNK], first_index + start)
                total.accepted += part.accepted
                total.rejected += part.rejected
                total.rejections.extend(part.rejections)
        del total.rejections[MAX_REJECTIONS_REPORTED:]
        self.ledger.accepted[caller] += total.accepted
        if total.accepted:
            self._on_ingested()
        return total
