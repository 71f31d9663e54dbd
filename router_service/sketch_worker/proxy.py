"""The router's end of the sketch worker: a ``StatsStore`` and a series that live elsewhere.

``WorkerStore`` is what ``RouterCore.store`` is with ``--sketch-worker``:
writes become messages to the worker (``record_grouped`` sends one batch's
columns, which feed the worker's store *and* its dashboard series), reads
(``stats``, ``snapshot``: every RankProviders call) answer from a mirror of
the cached ``EndpointStats`` the worker sends after each of its refreshes: a
dict lookup, as in process. ``WorkerSeries`` forwards health transitions and
asks the worker for dashboard points (``points_of`` is async for that).

What the loop still pays per outcome: building six columns and pickling
them (~0.3 µs), against ~3 µs of store, series and refresh it no longer runs
(bench/README.md section 7).

Backpressure: the socket's write buffer is bounded (``WRITE_HIGH_WATER``), and
ingestion awaits ``drain`` after each slice, so a worker that falls behind
slows the StreamOutcomes writers (gRPC flow control reaches the sidecars), as
a busy loop did before, instead of queueing without bound.

When the worker dies (killed, out of memory, a bug): the router logs it once,
``router_sketch_worker_up`` drops to 0, and both objects fall back to an
in-process store and series, empty, as after a restart; health (in the
router) is kept, and the router goes on serving. It does not restart the
worker: a worker that crashes on some input would crash again, and in
process is what the router did before the worker existed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import subprocess
import sys
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from router_common.domain import Clock, EndpointKey
from router_service.dashboard_series import DashboardSeries, Points
from router_service.health import Transition
from router_service.model import EMPTY_STATS, EndpointStats, HealthState, Outcome
from router_service.sketch_worker.frames import FrameBuffer, FrameError, columns_of, frame
from router_service.sketches.store import EndpointExport, InMemoryStatsStore, group_by_endpoint
from router_service.sketches.windows import BucketExport, SeriesPoint

log = logging.getLogger(__name__)

#: Bytes the router queues for the worker before ingestion waits (``drain``): ~30
#: slices of outcomes, tens of milliseconds of the worker's time.
WRITE_HIGH_WATER = 1 << 20
_READ = 1 << 20
#: How long ``stop`` waits for the worker to exit after its socket closes.
_EXIT_WAIT_S = 2.0


class WorkerGone(Exception):
    """The worker exited; the caller answers from the in-process fallback."""


class SketchWorker:
    """Starts the worker process and carries messages both ways."""

    def __init__(self, clock: Clock, min_interval_s: float, max_interval_s: float) -> None:
        self.clock = clock
        self._intervals = (min_interval_s, max_interval_s)
        self.store = WorkerStore(self)
        self.series = WorkerSeries(self)
        #: The in-process fallback, once the worker is gone (None while it runs).
        self.local: tuple[InMemoryStatsStore, DashboardSeries] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._requests: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._stopping = False

    @property
    def running(self) -> bool:
        """False once the worker was lost and the sketches went back in process."""
        return self.local is None

    @property
    def queued_bytes(self) -> int:
        """Bytes written for the worker and not yet taken by its socket."""
        writer = self._writer
        return writer.transport.get_write_buffer_size() if writer is not None else 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def exit_code(self) -> int | None:
        """The worker's exit status once it exited (None while it runs)."""
        return self._process.poll() if self._process is not None else None

    async def start(self) -> None:
        """Start the process; its socket end is inherited (``pass_fds``), nothing listens."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        min_interval, max_interval = self._intervals
        try:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "router_service.sketch_worker",
                    "--fd",
                    str(theirs.fileno()),
                    "--min-interval",
                    repr(min_interval),
                    "--max-interval",
                    repr(max_interval),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=_READ)
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read_loop(reader), name="sketch-worker")
        log.info("sketch worker started", extra={"pid": self._process.pid})

    async def stop(self) -> None:
        """Close the socket (the worker exits on it), and wait for the process."""
        self._stopping = True
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
        process = self._process
        if process is not None and process.poll() is None:
            try:
                await asyncio.wait_for(asyncio.to_thread(process.wait), _EXIT_WAIT_S)
            except TimeoutError:
                process.kill()
                await asyncio.to_thread(process.wait)

    # -- sending ---------------------------------------------------------------

    def send(self, message: tuple[Any, ...]) -> None:
        """Queue one message (never blocks: ``drain`` is where a writer waits)."""
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        writer.writelines(frame(message))

    async def drain(self) -> None:
        """Wait while more than ``WRITE_HIGH_WATER`` bytes are queued for the worker."""
        writer = self._writer
        if writer is None or self.local is not None:
            return
        try:
            await writer.drain()
        except ConnectionError:
            self._lost("its socket closed")

    async def request(self, *message: Any) -> Any:
        """Send ``(kind, id, *rest)`` and wait for its reply; WorkerGone if it exits."""
        if self.local is not None:
            raise WorkerGone
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = future
        try:
            self.send((message[0], request_id, *message[1:]))
            return await future
        finally:
            self._requests.pop(request_id, None)

    async def settled(self) -> None:
        """Return once every outcome sent so far is in the stats ``store`` answers with."""
        try:
            await self.request("refresh")
        except WorkerGone:
            if self.local is not None:
                self.local[0].refresh()

    # -- receiving -------------------------------------------------------------

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        frames = FrameBuffer()
        cause = "it exited"
        try:
            while data := await reader.read(_READ):
                for message in frames.feed(data):
                    self._receive(message)
        except (ConnectionError, FrameError) as exc:
            cause = f"its socket failed ({type(exc).__name__})"
        if not self._stopping:
            self._lost(cause)

    def _receive(self, message: tuple[Any, ...]) -> None:
        if message[0] == "stats":
            self.store.mirror(message[1])
        elif message[0] == "reply":
            future = self._requests.get(message[1])
            if future is not None and not future.done():
                future.set_result(message[2])

    def _lost(self, cause: str) -> None:
        """The worker is gone: log it once, and go on in process."""
        if self.local is not None:
            return
        process = self._process
        code = process.poll() if process is not None else None
        if process is not None and code is None:
            process.kill()  # alive but unusable (its socket failed): no orphan
        self.local = (InMemoryStatsStore(clock=self.clock), DashboardSeries(self.clock))
        log.error(
            "sketch worker lost; latency sketches and the dashboard history continue "
            "in the router process, from empty",
            extra={"cause": cause, "exit_code": code},
        )
        for future in self._requests.values():
            if not future.done():
                future.set_exception(WorkerGone())
        if self._writer is not None:
            self._writer.close()


class WorkerStore:
    """``StatsStore`` whose writes go to the worker and whose reads come from its mirror.

    With ``--redis`` the replicator's paths cross too: ``absorb`` (a checkpoint
    at restore) is a message, ``export`` (this replica's checkpoint) a
    request answered after every write sent before it, so the checkpoint is
    as consistent with the stream position as in process. ``timeseries`` and
    ``bucket_digests`` (one endpoint, synchronously) answer only after a
    fallback; nothing in the router calls them."""

    def __init__(self, worker: SketchWorker) -> None:
        self._worker = worker
        self._mirror: dict[EndpointKey, EndpointStats] = {}
        #: The endpoints of the last ``retain`` (None before any): stats the worker
        #: sent before it saw that retain must not bring a removed endpoint back.
        self._kept: frozenset[EndpointKey] | None = None

    def mirror(self, changed: Mapping[EndpointKey, EndpointStats]) -> None:
        """The worker's stats of endpoints that changed (one of its refreshes)."""
        kept = self._kept
        if kept is None:
            self._mirror.update(changed)
        else:
            self._mirror.update((k, v) for k, v in changed.items() if k in kept)

    def _local(self) -> InMemoryStatsStore | None:
        local = self._worker.local
        return local[0] if local is not None else None

    def record(self, outcome: Outcome) -> None:
        self.record_many((outcome,))

    def record_many(self, outcomes: Iterable[Outcome]) -> None:
        self.record_grouped(group_by_endpoint(outcomes))

    def record_grouped(self, by_endpoint: Mapping[EndpointKey, list[Outcome]]) -> None:
        """One message for the worker's store and its series (``WorkerSeries`` records nothing)."""
        local = self._worker.local
        if local is not None:
            local[0].record_grouped(by_endpoint)
            local[1].record_grouped(by_endpoint)
        elif by_endpoint:
            self._worker.send(("record", columns_of(by_endpoint)))

    def refresh(self, now: float | None = None) -> None:
        """In process only after a fallback; the worker refreshes on its own cadence."""
        if (local := self._local()) is not None:
            local.refresh(now)

    def refresh_steps(self, now: float | None = None) -> Iterator[None]:
        if (local := self._local()) is not None:
            return local.refresh_steps(now)
        return iter(())

    def stats(self, key: EndpointKey) -> EndpointStats:
        if (local := self._local()) is not None:
            return local.stats(key)
        return self._mirror.get(key, EMPTY_STATS)

    def snapshot(self, keys: Iterable[EndpointKey]) -> dict[EndpointKey, EndpointStats]:
        if (local := self._local()) is not None:
            return local.snapshot(keys)
        mirror = self._mirror
        return {k: mirror.get(k, EMPTY_STATS) for k in keys}

    def retain(self, keys: Collection[EndpointKey]) -> None:
        """Catalog reload: the worker's store and series forget the others, so does the mirror."""
        if (local := self._worker.local) is not None:
            local[0].retain(keys)
            local[1].retain(keys)
            return
        keep = self._kept = frozenset(keys)
        self._mirror = {k: v for k, v in self._mirror.items() if k in keep}
        self._worker.send(("retain", keep))

    def keys(self) -> frozenset[EndpointKey]:
        if (local := self._local()) is not None:
            return local.keys()
        return frozenset(self._mirror)

    def timeseries(self, key: EndpointKey) -> list[SeriesPoint]:
        return self._in_process("timeseries").timeseries(key)

    def bucket_digests(self, key: EndpointKey, now: float | None = None) -> list[BucketExport]:
        return self._in_process("bucket_digests").bucket_digests(key, now)

    def absorb(
        self,
        key: EndpointKey,
        exported: Iterable[BucketExport],
        last_sample_at: float | None,
        now: float | None = None,
    ) -> None:
        if (local := self._local()) is not None:
            local.absorb(key, exported, last_sample_at, now)
        else:
            now = self._worker.clock() if now is None else now
            self._worker.send(("absorb", key, list(exported), last_sample_at, now))

    async def export(self, now: float) -> list[EndpointExport]:
        try:
            exported: list[EndpointExport] = await self._worker.request("export", now)
        except WorkerGone:
            local = self._local()
            assert local is not None
            return await local.export(now)
        return exported

    async def settled(self) -> None:
        await self._worker.settled()

    async def drain(self) -> None:
        await self._worker.drain()

    def _in_process(self, what: str) -> InMemoryStatsStore:
        local = self._local()
        if local is None:
            raise NotImplementedError(f"{what} needs the sketches in process (no --sketch-worker)")
        return local


class WorkerSeries:
    """The dashboard series' side of the worker: transitions out, points back."""

    def __init__(self, worker: SketchWorker) -> None:
        self._worker = worker

    def record_many(self, outcomes: Iterable[Outcome]) -> None:
        """Nothing to send: ``WorkerStore.record_many`` fed the worker's series too."""
        if (local := self._worker.local) is not None:
            local[1].record_many(outcomes)

    def record_grouped(self, by_endpoint: Mapping[EndpointKey, list[Outcome]]) -> None:
        """Nothing to send: ``WorkerStore.record_grouped`` fed the worker's series too."""
        if (local := self._worker.local) is not None:
            local[1].record_grouped(by_endpoint)

    def on_transition(self, transition: Transition) -> None:
        if (local := self._worker.local) is not None:
            local[1].on_transition(transition)
        else:
            self._worker.send(("transition", transition))

    def retain(self, keys: Iterable[EndpointKey]) -> None:
        """Nothing to send: ``WorkerStore.retain`` told the worker's series too."""
        if (local := self._worker.local) is not None:
            local[1].retain(keys)

    async def points_of(
        self, wanted: Sequence[tuple[EndpointKey, HealthState]], range_name: str, min_samples: int
    ) -> list[Points]:
        try:
            points: list[Points] = await self._worker.request(
                "points", list(wanted), range_name, min_samples
            )
        except WorkerGone:
            assert self._worker.local is not None
            return await self._worker.local[1].points_of(wanted, range_name, min_samples)
        return points


class SketchWorkerCollector:
    """``/metrics``: whether the worker runs (0 after a fallback to in process)."""

    def __init__(self, worker: SketchWorker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "router_sketch_worker_up",
            "1 while the sketch worker process holds the latency sketches, 0 after it was "
            "lost and the router fell back to computing them in process.",
            value=1.0 if self.worker.running else 0.0,
        )
