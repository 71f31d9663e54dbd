"""Outcome reporting: a bounded in-memory queue drained in batches over StreamOutcomes.

``submit`` never blocks and never awaits, so reporting cannot delay a request.
When the backlog is full the oldest outcome is dropped (fresh data matters more
to ranking) and counted. A background task sends what is queued every
``outcome_flush_interval_s``; one StreamOutcomes call carries several batch
messages and is acknowledged when closed.

An *urgent* outcome (``submit(..., urgent=True)``: evidence the router lacks,
chosen by the proxy) starts a flush at once instead of waiting for the
interval: on a fresh router the first answers otherwise reach it only after
0.5 s, and every sidecar keeps replaying an order that this outcome already
contradicts. Early flushes are at least ``urgent_min_gap_s`` apart (a later
urgent outcome waits for the gap's end, one timer at most), and none is
started while delivery is failing (the backoff stands), so a flood of urgent
outcomes costs at most one StreamOutcomes call per gap. ``submit`` returns a
ticket (the outcome's position in submission order) and ``on_delivered(n)``
is called after each acknowledged call with the highest ticket it covered,
so a caller can act once the router has a given outcome.

Delivery is exactly-once: each batch gets an id (this process's ``sender``
name and a sequence number) when it is formed, and keeps it until the router
acknowledges it. After a failure the same batches are resent with the same
ids, so a batch the router had already applied before the stream broke is
acknowledged as a duplicate instead of counted twice; when the router says
which batches it applied (trailing metadata ``router-applied-sequences``) they
are not resent at all. The sender backs off (exponential, capped) meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable

import grpc

from router_common.limits import MAX_OUTCOMES_PER_BATCH, MAX_SENDER_LEN
from router_common.log_limit import LogLimiter
from router_common.pb import router_pb2, router_pb2_grpc
from sidecar.metrics import SidecarMetrics
from sidecar.router_channel import rpc_detail
from sidecar.router_clock import RouterClock

log = logging.getLogger("sidecar.outcomes")


def default_sender() -> str:
    """Unique per process: a restarted sidecar must not reuse its predecessor's ids."""
    host = socket.gethostname()[:80]
    return f"{host}/{os.getpid()}/{secrets.token_hex(6)}"


class OutcomeReporter:
    """Bounded queue + batch sender. Start with ``start()``, stop with ``stop()``."""

    def __init__(
        self,
        stub: router_pb2_grpc.RouterStub | None,
        metrics: SidecarMetrics,
        *,
        max_queue: int,
        batch_size: int,
        flush_interval_s: float,
        send_timeout_s: float,
        max_backoff_s: float,
        batches_per_call: int = 8,
        on_router_ok: Callable[[], None] = lambda: None,
        on_router_down: Callable[[], None] = lambda: None,
        sender: str | None = None,
        urgent_min_gap_s: float = 0.0,
        on_delivered: Callable[[int], None] = lambda through: None,
        router_clock: RouterClock | None = None,
    ) -> None:
        self._stub = stub
        #: Puts each outcome's ``started_at`` (this node's clock) on the router's.
        self._router_clock = router_clock or RouterClock()
        self._router_clock.on_first_offset = self._shift_unmeasured
        self._m = metrics
        self._queue: deque[router_pb2.Outcome] = deque()
        #: Batches formed (with their ids) and not yet acknowledged, oldest first.
        self._pending: deque[router_pb2.RecordOutcomeRequest] = deque()
        self._pending_outcomes = 0
        self._max = max(1, max_queue)
        self._batch = max(1, min(batch_size, MAX_OUTCOMES_PER_BATCH))
        self._interval = flush_interval_s
        self._timeout = send_timeout_s
        self._max_backoff = max_backoff_s
        self._batches_per_call = batches_per_call
        self._on_ok = on_router_ok
        self._on_down = on_router_down
        #: "router rejected outcomes": one line per rejected field per 10 s. A cause
        #: that lasts (a catalog both sides disagree on) rejects at every flush, and
        #: the flush interval is 0.5 s.
        self._rejection_log = LogLimiter()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: One call at a time: two would send the same pending batches.
        self._sending = asyncio.Lock()
        self.sender = (sender or default_sender())[:MAX_SENDER_LEN]
        self._sequence = 0
        #: Outcomes ever submitted (tickets), and the ticket of the last one formed into a batch.
        self._submitted = 0
        self._formed_through = 0
        self._urgent_gap = urgent_min_gap_s
        self._on_delivered = on_delivered
        #: Loop time the last flush started; whether the last one succeeded.
        self._last_flush_at = -1e18
        self._delivering = True
        self._urgent_timer: asyncio.TimerHandle | None = None
        self.urgent_wakes = 0
        self.dropped = 0
        self.in_flight = 0
        self.sent = 0
        self.duplicates = 0
        self.failures = 0

    # -- producer side (request path) ---------------------------------------

    def submit(self, outcome: router_pb2.Outcome, urgent: bool = False) -> int:
        """Queue one outcome; O(1), never blocks. Drops the oldest when full.

        Returns its ticket (0 when there is no router). ``urgent``: send it
        soon (see the module docstring), not at the next interval.
        """
        if self._stub is None:
            return 0
        clock = self._router_clock
        if clock.measured and outcome.started_at:
            outcome.started_at += clock.offset_s
        if self.backlog >= self._max:
            self._drop_oldest()
        self._queue.append(outcome)
        self._submitted += 1
        # (the queue-depth gauge is set when batches form and at each scrape, not here)
        if len(self._queue) >= self._batch:
            self._wake.set()
        elif urgent and self._urgent_gap > 0 and self._delivering and self._task is not None:
            self._wake_urgently()
        return self._submitted

    def _wake_urgently(self) -> None:
        """Wake the sender now, or when the gap since the last flush has passed."""
        if self._urgent_timer is not None or self._wake.is_set():
            return  # a flush is already coming
        loop = asyncio.get_running_loop()
        wait = self._last_flush_at + self._urgent_gap - loop.time()
        self.urgent_wakes += 1
        if wait <= 0:
            self._wake.set()
        else:
            self._urgent_timer = loop.call_later(wait, self._urgent_due)

    def _urgent_due(self) -> None:
        self._urgent_timer = None
        self._wake.set()

    def _drop_oldest(self) -> None:
        """Drop the oldest outcome held: the oldest unsent batch first, else the queue's head."""
        if self._pending and self.in_flight == 0:
            batch = self._pending.popleft()
            lost = len(batch.outcomes)
            self._pending_outcomes -= lost
        elif self._queue:
            self._queue.popleft()
            lost = 1
        else:
            return  # everything held is in flight; the new outcome is kept
        self.dropped += lost
        self._m.outcomes_dropped.inc(lost)

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def backlog(self) -> int:
        """Outcomes not yet acknowledged by the router (queued + formed into batches)."""
        return len(self._queue) + self._pending_outcomes

    # -- sender ---------------------------------------------------------------

    def start(self) -> None:
        if self._stub is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="outcomes")

    async def stop(self, final_flush_timeout_s: float = 4.0) -> None:
        """Stop the sender, flushing what is left (bounded) so a clean shutdown loses little.

        The whole backlog, call after call while the router takes them: one call
        carries at most ``batches_per_call`` batches, and a backlog built up while
        the router was away (up to ``max_queue``) used to lose all but that many at
        every shutdown, without a word. What could not be delivered is logged.
        """
        if self._task is None:
            return
        self._task.cancel()
        if self._urgent_timer is not None:
            self._urgent_timer.cancel()
            self._urgent_timer = None
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(final_flush_timeout_s):
                while self.backlog:
                    before = self.backlog
                    if not await self.flush_once() or self.backlog >= before:
                        break
        if self.backlog:
            log.warning(
                "outcomes not delivered at shutdown",
                extra={"outcomes": self.backlog, "timeout_s": final_flush_timeout_s},
            )

    async def _run(self) -> None:
        backoff = self._interval
        while True:
            if self._delivering:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._wake.wait()
            else:
                # Delivery is failing: wait out the backoff whatever wakes us. A queue
                # past a batch's worth set the wake on every outcome, and the sender
                # retried about every 10 ms through an outage (a WARNING each time, and
                # every sidecar hammering the router as it came back).
                await asyncio.sleep(backoff)
            self._wake.clear()
            if not self.backlog:
                backoff = self._interval
                continue
            self._last_flush_at = asyncio.get_running_loop().time()
            try:
                ok = await self.flush_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the sender die
                log.exception("outcome sender error")
                ok = False
            self._delivering = ok
            backoff = self._interval if ok else min(max(backoff * 2, 0.05), self._max_backoff)

    def _shift_unmeasured(self, offset_s: float) -> None:
        """The first offset to the router's clock is known: everything queued so far
        was stamped on this node's clock alone (sidecar/router_clock.py). A batch
        being sent right now keeps its times if that send succeeds."""
        pending = (outcome for batch in self._pending for outcome in batch.outcomes)
        for outcome in itertools.chain(self._queue, pending):
            if outcome.started_at:
                outcome.started_at += offset_s

    def _form_batches(self) -> None:
        """Turn queued outcomes into id-carrying batches, up to one call's worth."""
        while self._queue and len(self._pending) < self._batches_per_call:
            n = min(len(self._queue), self._batch)
            self._sequence += 1
            batch = router_pb2.RecordOutcomeRequest(
                outcomes=[self._queue.popleft() for _ in range(n)],
                batch_id=router_pb2.BatchId(sender=self.sender, sequence=self._sequence),
            )
            self._pending.append(batch)
            self._pending_outcomes += n
        self._formed_through = self._submitted - len(self._queue)
        self._m.outcome_queue_depth.set(self.backlog)

    def _acknowledged(self, sequences: set[int]) -> None:
        kept: deque[router_pb2.RecordOutcomeRequest] = deque()
        for batch in self._pending:
            if batch.batch_id.sequence in sequences:
                self._pending_outcomes -= len(batch.outcomes)
            else:
                kept.append(batch)
        self._pending = kept

    async def flush_once(self) -> bool:
        """Send up to ``batches_per_call`` batches in one StreamOutcomes call.

        Returns True when the router acknowledged them (they leave the backlog for
        good) or there was nothing to send; False when some remain to resend.
        """
        async with self._sending:
            return await self._flush_locked()

    async def _flush_locked(self) -> bool:
        assert self._stub is not None
        self._form_batches()
        batches = list(self._pending)[: self._batches_per_call]
        through = self._formed_through if len(batches) == len(self._pending) else 0
        if not batches:
            return True
        self.in_flight = sum(len(b.outcomes) for b in batches)

        async def requests() -> AsyncIterator[router_pb2.RecordOutcomeRequest]:
            for b in batches:
                yield b

        call = self._stub.StreamOutcomes(requests(), timeout=self._timeout)
        try:
            ack = await call
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError) as exc:
            self.in_flight = 0
            applied = _applied_sequences(exc)
            self._acknowledged(applied)
            self.failures += 1
            self._m.outcome_send_failures.inc()
            self._on_down()
            code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
            log.warning(
                "outcome delivery failed; will resend the unapplied batches",
                extra={
                    "why": code,
                    "detail": rpc_detail(exc),
                    "applied_batches": len(applied),
                    "backlog": self.backlog,
                },
            )
            return False
        except asyncio.CancelledError:
            self.in_flight = 0
            raise
        self.in_flight = 0
        self._acknowledged({b.batch_id.sequence for b in batches})
        self.sent += ack.accepted
        self.duplicates += ack.duplicate_batches
        self._m.outcomes_sent.inc(ack.accepted)
        if ack.rejected:
            self._m.outcomes_rejected.inc(ack.rejected)
            first = ack.rejections[0].reason if ack.rejections else ""
            self._rejection_log.warning(
                log,
                "router rejected outcomes",
                cause=first.partition(":")[0],
                rejected=ack.rejected,
                first_reason=first,
            )
        self._on_ok()
        if through:
            self._on_delivered(through)
        return True


def _applied_sequences(exc: Exception) -> set[int]:
    """The batches a failed call applied, from the router's trailing metadata."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return set()
    for key, value in exc.trailing_metadata() or ():
        if key == "router-applied-sequences" and isinstance(value, str):
            return {int(part) for part in value.split(",") if part.strip().isdigit()}
    return set()
