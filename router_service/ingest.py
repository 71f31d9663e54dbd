"""Applies outcome batches exactly once, within each caller's budget, without starving ranking.

Ranking and ingestion share one event loop (and, in the benchmark, one core).
Applying an outcome costs 6-8 µs of the loop in the server with the sketch
worker (``router_service.sketch_worker``: validation, health and the hand-off;
10-12.5 µs plus its quantile refresh with the sketches in process,
and 18-29 µs before ``GroupedRecorder``); four writers at full speed used to take
nearly all of the loop and RankProviders p99 grew 13×. The mechanism here is a
*time share*, measured, not guessed:

* batches are applied by one writer at a time (an ``asyncio.Lock``: the others
  wait, and because their handler does not read the next message, gRPC flow
  control pushes back on the sending sidecar; that is the backpressure),
* in slices of ``IngestPacing.slice_outcomes`` outcomes; each slice is timed,
* while RankProviders calls are being served (one seen in the last
  ``ranking_quiet_s``), after each slice ingestion sleeps long enough that it
  takes at most ``share`` of the loop's time; with no ranking traffic it only
  yields (``sleep(0)``) and runs at full speed.

The quantile refresh the outcomes make necessary is charged to the same budget
(``charge``) when it runs on the loop (no sketch worker), so ranking keeps at
least ``1 - share`` of the loop whatever the writers do, and waits at most one
slice (~3-5 ms) or one refresh step for ingestion. With the worker, each slice
also awaits its socket's bounded buffer (``StatsStore.drain``). bench/bench_router.py
``--scenario starvation`` measures both sides.

A batch is atomic: once its id is checked and its budget taken, it is applied
to the end in a shielded task even if the caller's RPC is cancelled (deadline,
disconnect), and its id is remembered first. So a resent batch is recognised
and acknowledged without being counted twice. With ``--redis``, once the batch
is applied to the end (not before: a replica that dies mid-batch must not make
its peers refuse the resend) its id goes on the replication stream, and every
peer remembers it too (``CallerLedger.learn``), so a resend that reaches a peer
after that (milliseconds) is acknowledged there as well.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

from prometheus_client.core import CounterMetricFamily

from router_common.json_text import as_json
from router_common.limits import MAX_REJECTIONS_REPORTED, MAX_SENDER_LEN
from router_common.pb import router_pb2
from router_service.callers import CallerLedger
from router_service.core import IngestResult, RouterCore
from router_service.outcome_validation import BatchValidator
from router_service.sketch_worker.proxy import WorkerStore
from router_service.sketches.store import InMemoryStatsStore

#: Loop time ingestion may bank while it waits (a few slices' worth): enough
#: to absorb late timers, too little to stall ranking when spent at once.
_BUDGET_CAP_S = 0.002


@dataclass(frozen=True, slots=True)
class IngestPacing:
    """How outcome ingestion shares the event loop with ranking.

    ================  =======  ====================================================
    field             default  why
    ================  =======  ====================================================
    share             0.25     most of the loop's time ingestion takes while
                               RankProviders calls are being served: ranking keeps
                               the rest, so its throughput falls at most ~1/(1-share)
                               (the starvation target is 2x, and p99 runs above p50).
                               With the sketch worker an outcome costs 6-8 µs of the
                               loop in the server (validation, health, the hand-off;
                               10-12.5 µs plus its refresh with the store and the
                               series in process), so 0.25 of the loop is 30-40k
                               outcomes/s (the target is 30k). Full starvation runs,
                               2026-12-02, final code: both targets in 9 of 10 at
                               0.25 (p99 ratio 1.40-2.12x, 30.1-39.5k/s), 1 of 4 at
                               0.22 (fewer outcomes: 24.5-36.7k/s); without the
                               worker, 0 of 4 at the previous default 0.33
                               (bench/README.md section 7). 1 disables pacing.
    slice_outcomes    512      outcomes applied between two yields: ~4-5 ms, the
                               longest a ranking call waits for ingestion (a
                               batch holds at most 1,000, so two slices). Each
                               slice starts cold: ranking ran in between and
                               left ingestion's data out of the cache, which
                               made a slice of 64 cost ~1.5-2x its in-process
                               time in the loaded server. Fewer, larger slices
                               pay that less often, and give each endpoint more
                               outcomes per step (the store's per-endpoint fast
                               path). Full starvation runs, interleaved, share
                               0.38: 8.0-10.5 µs of loop per outcome at 256
                               against 10.8-12.6 at 64, ingestion 28.5-37.6k/s
                               against 25.1-29.4k/s, and ranking's p99 ratio
                               no worse (1.54-2.50x against 1.78-2.77x). Then
                               512 against 256, share 0.33, 10 interleaved pairs
                               (2026-12-02): 9.1 against 10.2 µs per outcome
                               (medians; lower in 9 of 10 pairs), ingestion
                               30.0k against 27.4k/s, p99 ratio alike (2.05x
                               against 2.04x); bench/README.md section 7.
    ranking_quiet_s   0.25     with no RankProviders call for this long, ingestion
                               is not paced (only yields between slices): nothing
                               to protect, so a backlog drains at full speed.
    ================  =======  ====================================================
    """

    share: float = 0.25
    slice_outcomes: int = 512
    ranking_quiet_s: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], got {self.share}")
        if self.slice_outcomes < 1:
            raise ValueError(f"slice_outcomes must be >= 1, got {self.slice_outcomes}")
        if self.ranking_quiet_s < 0:
            raise ValueError(f"ranking_quiet_s must be >= 0, got {self.ranking_quiet_s}")


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
        self,
        core: RouterCore,
        ledger: CallerLedger,
        on_ingested: Callable[[], None],
        pacing: IngestPacing | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core = core
        self.ledger = ledger
        self.pacing = pacing or IngestPacing()
        #: Applies each slice: ``RouterCore.record``'s result, faster (GroupedRecorder).
        self.recorder = GroupedRecorder(core)
        self._monotonic = monotonic
        self._on_ingested = on_ingested
        self._lock = asyncio.Lock()
        self._ranking_seen = -float("inf")
        self._budget = _BUDGET_CAP_S
        self._refilled = monotonic()
        #: Seconds ingestion slept to leave the loop to ranking, and seconds of
        #: loop time it spent applying outcomes (``/metrics``: IngestCollector).
        self.paced_s = 0.0
        self.busy_s = 0.0
        #: The CPU time of those slices: below ``busy_s`` when the loop's thread
        #: lost its core (or the GIL) mid-slice.
        self.busy_cpu_s = 0.0
        #: Loop seconds of quantile refresh charged to ingestion (``charge``).
        self.refresh_s = 0.0

    def charge(self, spent: float) -> None:
        """Pay ``spent`` seconds of loop time done on ingestion's behalf outside a slice
        (the router's quantile refresh, which only runs because outcomes arrived) from
        the same budget, so the share bounds both: unpaid, the refresh took another
        ~10% of the loop under full ingestion (bench/README.md section 7)."""
        self._budget -= spent
        self.refresh_s += spent

    def ranking_served(self) -> None:
        """Called by RankProviders: ranking traffic is live, so ingestion is paced."""
        self._ranking_seen = self._monotonic()

    def _pause_after(self, spent: float) -> float:
        """How long to sleep after a slice that took ``spent`` seconds of loop time.

        A budget of loop time refills at ``share`` of the wall clock (capped at
        a few slices) and each slice spends what it took; a negative budget is
        slept off. Oversleeping (timers fire late) is credited, so the share
        is met on average, not undershot.
        """
        pacing = self.pacing
        now = self._monotonic()
        if pacing.share >= 1 or now - self._ranking_seen > pacing.ranking_quiet_s:
            self._budget, self._refilled = _BUDGET_CAP_S, now
            return 0.0
        self._budget = min(_BUDGET_CAP_S, self._budget + (now - self._refilled) * pacing.share)
        self._refilled = now
        self._budget -= spent
        return -self._budget / pacing.share if self._budget < 0 else 0.0

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
                f"caller {as_json(caller)} is over its outcome rate limit "
                f"({as_json(self.ledger.config.outcomes_per_second)}/s); retry in {wait:.2f} s",
                wait,
            )
        if batch_id is not None:
            self.ledger.remember(caller, *batch_id)
        task = asyncio.ensure_future(
            self._apply_whole(caller, message.outcomes, first_index, batch_id)
        )
        outcome.result = await asyncio.shield(task)
        return outcome

    async def _apply_whole(
        self,
        caller: str,
        outcomes: Sequence[router_pb2.Outcome],
        first_index: int,
        batch_id: tuple[str, int] | None,
    ) -> IngestResult:
        """Apply the batch, then (replicas) tell the peers its id: in the shielded
        task, so a cancelled RPC still publishes it once the batch is applied."""
        result = await self._apply_locked(caller, outcomes, first_index)
        replication = self.core.replication
        if batch_id is not None and replication is not None:
            replication.publish_batch_id(caller, *batch_id)
        return result

    async def _apply_locked(
        self, caller: str, outcomes: Sequence[router_pb2.Outcome], first_index: int
    ) -> IngestResult:
        total = IngestResult()
        size = self.pacing.slice_outcomes
        clock, thread_clock = time.perf_counter, time.thread_time
        async with self._lock:
            for start in range(0, len(outcomes), size):
                began, began_cpu = clock(), thread_clock()
                part = self.recorder.record(outcomes[start : start + size], first_index + start)
                total.accepted += part.accepted
                total.rejected += part.rejected
                total.rejections.extend(part.rejections)
                spent = clock() - began
                self.busy_s += spent
                self.busy_cpu_s += thread_clock() - began_cpu
                pause = self._pause_after(spent)
                self.paced_s += pause
                await asyncio.sleep(pause)
                # The sketch worker's socket buffer is bounded: a worker behind
                # slows the writers, not the router's memory (in process: no wait).
                await self.core.store.drain()
        del total.rejections[MAX_REJECTIONS_REPORTED:]
        self.ledger.count_accepted(caller, total.accepted)
        if total.accepted:
            self._on_ingested()
        return total


_error_class_of = itemgetter(3)  # Outcome.error_class
#: Stores that take ``record_grouped`` (in process, or forwarded to the sketch worker).
_GROUPING_STORES = (InMemoryStatsStore, WorkerStore)


class GroupedRecorder:
    """``RouterCore.record`` for the ingestion path: the same result, with the batch
    validated in one pass and grouped by endpoint once for the store and the series.

    Why not ``RouterCore.record`` itself: it validates, then the stats store
    and the dashboard series each group the accepted outcomes again, and an
    outcome cost 14-18 µs of the serving loop (bench/README.md section 7).
    Here ``BatchValidator`` checks the common case inline and groups as it
    goes; the store queues each endpoint's group (``InMemoryStatsStore``'s
    ``_Pending``), the series tallies it in list passes, and health takes the
    outcomes one by one, in order, with a success on a healthy endpoint
    inlined (``HealthTracker.record_many``). Every step keeps the per-outcome
    semantics: same rejections, same stats, series, health, counters
    (tests/router/test_ingest_grouped.py compares both on random batches).

    With replication on, or a store other than the in-memory one (or its
    sketch-worker proxy), it is ``RouterCore.record``: those paths need the
    outcomes as one list.
    """

    def __init__(self, core: RouterCore) -> None:
        self.core = core
        self._validator = BatchValidator(core.known_endpoints)

    def record(self, messages: Sequence[router_pb2.Outcome], first_index: int = 0) -> IngestResult:
        core = self.core
        store = core.store
        if core.replication is not None or not isinstance(store, _GROUPING_STORES):
            return core.record(messages, first_index)
        known = core.known_endpoints
        if self._validator.known is not known:  # the catalog was reloaded
            self._validator = BatchValidator(known)
        result = IngestResult()
        accepted, by_endpoint, rejected = self._validator.validate(
            messages,
            core.clock(),
            first_index,
            result.rejections,
            MAX_REJECTIONS_REPORTED,
            core.outcomes_rejected_by_field,
        )
        # Baselines are read before this batch lands, as RouterCore.record does.
        stats = store.stats
        baselines = {k: stats(k).ttft_1h.get(0.5) for k in by_endpoint}
        store.record_grouped(by_endpoint)
        core.series.record_grouped(by_endpoint)
        core.health.record_many(accepted, baselines)
        by_class = core.outcomes_by_class
        for error_class, count in Counter(map(_error_class_of, accepted)).items():
            by_class[error_class.value] += count
        result.accepted = len(accepted)
        result.rejected = rejected
        core.outcomes_rejected += rejected
        return result


class IngestCollector:
    """``/metrics``: how much loop time ingestion took, and how long it was held back."""

    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "router_ingest_busy_seconds",
            "Event-loop seconds spent applying outcomes.",
            value=self.ingestor.busy_s,
        )
        yield CounterMetricFamily(
            "router_ingest_refresh_seconds",
            "Event-loop seconds of quantile refresh, paid from ingestion's share.",
            value=self.ingestor.refresh_s,
        )
        yield CounterMetricFamily(
            "router_ingest_paced_seconds",
            "Seconds ingestion waited to leave the loop to RankProviders (--ingest-share).",
            value=self.ingestor.paced_s,
        )
