"""Outcome reporting: a bounded in-memory queue drained in batches over StreamOutcomes.

``submit`` never blocks and never awaits, so reporting cannot delay a request.
When the queue is full the oldest outcome is dropped (fresh data matters more
to ranking) and counted. A background task sends what is queued every
``outcome_flush_interval_s``; one StreamOutcomes call carries several batch
messages and is acknowledged when closed, so only acknowledged outcomes leave
the queue. On failure the batch goes back to the front of the queue and the
sender backs off (exponential, capped) until the router is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable

import grpc

from router_common.limits import MAX_OUTCOMES_PER_BATCH
from router_common.pb import router_pb2, router_pb2_grpc
from sidecar.metrics import SidecarMetrics

log = logging.getLogger("sidecar.outcomes")


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
    ) -> None:
        self._stub = stub
        self._m = metrics
        self._queue: deque[router_pb2.Outcome] = deque()
        self._max = max(1, max_queue)
        self._batch = max(1, min(batch_size, MAX_OUTCOMES_PER_BATCH))
        self._interval = flush_interval_s
        self._timeout = send_timeout_s
        self._max_backoff = max_backoff_s
        self._batches_per_call = batches_per_call
        self._on_ok = on_router_ok
        self._on_down = on_router_down
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.in_flight = 0
        self.sent = 0
        self.failures = 0

    # -- producer side (request path) ---------------------------------------

    def submit(self, outcome: router_pb2.Outcome) -> None:
        """Queue one outcome; O(1), never blocks. Drops the oldest when full."""
        if self._stub is None:
            return
        if len(self._queue) >= self._max:
            self._queue.popleft()
            self.dropped += 1
            self._m.outcomes_dropped.inc()
        self._queue.append(outcome)
        self._m.outcome_queue_depth.set(len(self._queue))
        if len(self._queue) >= self._batch:
            self._wake.set()

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def backlog(self) -> int:
        """Outcomes not yet acknowledged by the router (queued + being sent)."""
        return len(self._queue) + self.in_flight

    # -- sender ---------------------------------------------------------------

    def start(self) -> None:
        if self._stub is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="outcomes")

    async def stop(self, final_flush_timeout_s: float = 1.0) -> None:
        """Stop the sender, trying one last short flush so a clean shutdown loses little."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._queue:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(final_flush_timeout_s):
                    await self.flush_once()

    async def _run(self) -> None:
        backoff = self._interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._wake.wait()
            self._wake.clear()
            if not self._queue:
                backoff = self._interval
                continue
            try:
                ok = await self.flush_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the sender die
                log.exception("outcome sender error")
                ok = False
            backoff = self._interval if ok else min(max(backoff * 2, 0.05), self._max_backoff)

    async def flush_once(self) -> bool:
        """Send up to ``batches_per_call`` batches in one StreamOutcomes call.

        Returns True when the router acknowledged them (they leave the queue for
        good) or there was nothing to send; False when they were put back.
        """
        assert self._stub is not None
        n = min(len(self._queue), self._batch * self._batches_per_call)
        if n == 0:
            return True
        taken = [self._queue.popleft() for _ in range(n)]
        self.in_flight = n
        self._m.outcome_queue_depth.set(len(self._queue))
        batches = [
            router_pb2.RecordOutcomeRequest(outcomes=taken[i : i + self._batch])
            for i in range(0, n, self._batch)
        ]

        async def requests() -> AsyncIterator[router_pb2.RecordOutcomeRequest]:
            for b in batches:
                yield b

        try:
            ack = await self._stub.StreamOutcomes(requests(), timeout=self._timeout)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError) as exc:
            self.in_flight = 0
            self._put_back(taken)
            self.failures += 1
            self._m.outcome_send_failures.inc()
            self._on_down()
            code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
            log.warning(
                "outcome delivery failed; will retry",
                extra={"why": code, "queued": len(self._queue)},
            )
            return False
        except asyncio.CancelledError:
            self.in_flight = 0
            self._put_back(taken)
            raise
        self.in_flight = 0
        self.sent += ack.accepted
        self._m.outcomes_sent.inc(ack.accepted)
        if ack.rejected:
            log.warning(
                "router rejected outcomes",
                extra={
                    "rejected": ack.rejected,
                    "first_reason": ack.rejections[0].reason if ack.rejections else "",
                },
            )
        self._on_ok()
        return True

    def _put_back(self, taken: list[router_pb2.Outcome]) -> None:
        """Failed batch back to the front; whatever does not fit is dropped and counted."""
        room = self._max - len(self._queue)
        keep = taken[-room:] if room > 0 else []  # keep the newest of the batch
        lost = len(taken) - len(keep)
        self._queue.extendleft(reversed(keep))
        if lost:
            self.dropped += lost
            self._m.outcomes_dropped.inc(lost)
        self._m.outcome_queue_depth.set(len(self._queue))
