"""The Redis side of replica sharing: publish, consume, checkpoint, restore, probe permits.

Everything here runs as background tasks on the router's event loop; the
request path only calls the two synchronous, I/O-free methods of the
``core.Replication`` seam (``publish`` appends to a bounded buffer,
``filter_probes`` reads a set). Redis being down, slow or restarted therefore
never blocks or fails a RankProviders or an outcome report: it only delays
what peers see. See the package docstring for the design and its guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from router_common.domain import Clock, EndpointKey
from router_service.core import RouterCore
from router_service.model import HealthState, HealthView, Outcome
from router_service.replication.codec import (
    NO_OUTCOMES,
    BatchKey,
    CodecError,
    decode_batch_ids,
    decode_buckets,
    decode_checkpoint,
    decode_outcomes,
    encode_batch_ids,
    encode_buckets,
    encode_checkpoint,
    encode_outcomes,
)
from router_service.replication.config import ReplicationConfig

log = logging.getLogger(__name__)

#: Recent replication lags kept for the /metrics quantiles (bounded).
LAG_SAMPLES = 2048
#: Stream entries read per XREAD / XRANGE call.
READ_COUNT = 500
#: Stream entries published per pipelined round trip.
PUBLISH_BATCH = 64
#: Peer replicas whose newest batch number is remembered (for de-duplication).
MAX_ORIGINS = 1024

# Delete the permit only if this replica still holds it (compare-and-delete).
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


class Keys:
    """Every Redis key this router uses, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.stream = f"{prefix}:outcomes"
        self.checkpoint = f"{prefix}:checkpoint"
        self.lease = f"{prefix}:checkpoint:lease"
        self._probe = f"{prefix}:probe:"

    def probe(self, key: EndpointKey) -> str:
        return f"{self._probe}{key.provider}|{key.model}"


#: Batch ids one stream entry carries at most (see ``publish_batch_id``).
IDS_PER_ENTRY = 256


@dataclass(slots=True)
class _Unit:
    """One stream entry waiting to be published: an accepted batch (or slice of
    it) and/or the ids of batches applied here (``batch_ids``)."""

    seq: int
    payload: bytes
    count: int
    batch_ids: list[BatchKey] = field(default_factory=list)
    #: Set once the unit is in a pipeline: its fields are fixed from then on,
    #: even if the pipeline fails (Redis may have stored the entry, and peers
    #: would drop a resend with more ids as a duplicate of its number).
    sending: bool = False

    @property
    def ids(self) -> int:
        return len(self.batch_ids)


@dataclass(slots=True)
class ReplicationStats:
    """Counters for /metrics (monotonic unless noted)."""

    published: int = 0
    applied: int = 0
    dropped: int = 0
    errors: int = 0
    bad_entries: int = 0
    duplicates: int = 0
    batch_ids_published: int = 0
    batch_ids_learned: int = 0
    batch_ids_dropped: int = 0
    checkpoints_written: int = 0
    checkpoints_loaded: int = 0
    restore_seconds: float | None = None


def fleet_health_rng(config: ReplicationConfig | None) -> random.Random | None:
    """The random source of health (ejection jitter), the same on every replica.

    Replicas apply outcomes in the same stream order, so with the same seed
    they draw the same jitter and eject for the same time; checkpoints carry
    the generator's state to a restarted replica.
    """
    return None if config is None else random.Random(f"llm-router-health:{config.prefix}")


class RedisReplicator:
    """One replica's link to its peers through Redis (implements ``core.Replication``)."""

    def __init__(
        self,
        config: ReplicationConfig,
        core: RouterCore,
        clock: Clock = time.time,
        on_data: Callable[[], None] = lambda: None,
        on_batch_ids: Callable[[Sequence[BatchKey]], None] = lambda ids: None,
    ) -> None:
        self.config = config
        self.core = core
        self.clock = clock
        self.on_data = on_data
        #: Called with the batch ids a peer applied (the router's CallerLedger
        #: remembers them, so a resend to this replica is not applied again).
        self.on_batch_ids = on_batch_ids
        self.replica_id = uuid.uuid4().hex[:16]
        self.keys = Keys(config.prefix)
        self.stats = ReplicationStats()
        self.lags: deque[float] = deque(maxlen=LAG_SAMPLES)
        # Any: redis-py types replies as bytes | str (decode_responses); they are
        # bytes here and every reply is checked where it is read.
        self._client: Any = aioredis.Redis.from_url(
            config.url,
            password=config.password,
            socket_timeout=config.socket_timeout_s,
            socket_connect_timeout=config.socket_timeout_s,
            # One retry, on a new connection, for a connection error only: after a
            # Redis restart the pool still holds connections to the old server, and
            # the first call on each failed ("Connection closed by server") -- a second
            # "lost"/"restored" pair for one restart. A timeout (Redis slow) is not
            # retried, so a slow Redis is still noticed after one socket timeout.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            max_connections=8,
        )
        self._seq = 0
        self._buffer: deque[_Unit] = deque()
        self._buffered = 0
        self._buffered_ids = 0
        #: Own batches whose health waits for the stream to bring them back.
        self._pending: OrderedDict[int, tuple[float, list[Outcome]]] = OrderedDict()
        self._pending_count = 0
        self._last_id = "0-0"
        self._connected = False
        self._down_since: float | None = None
        self._failures = 0
        #: The kind of command Redis refused (see _ok), while that is the outage's cause.
        self._refused: str | None = None
        self._restored = asyncio.Event()
        self._wake = asyncio.Event()
        self._probe_held: set[EndpointKey] = set()
        self._tasks: list[asyncio.Task] = []
        #: Newest batch number applied per peer: entries at or below it are
        #: duplicates (a retried pipeline, a republish after a Redis restart).
        self._seen: OrderedDict[str, int] = OrderedDict()
        #: Units published in the last ``republish_window_s``: a Redis that
        #: restarted empty may have lost them before every peer read them.
        self._recent: deque[tuple[float, _Unit]] = deque()
        #: Set when Redis comes back: units published before this instant
        #: (monotonic) and within the window are published again.
        self._republish_before: float | None = None
        #: Redis's clock minus this replica's (seconds), measured with TIME at
        #: restore and every checkpoint tick. Stream ids are Redis's clock, so
        #: the retention trim (MINID) and the replication lag are computed on
        #: it: a writer whose clock ran 2 minutes ahead trimmed the whole stream.
        self._redis_offset = 0.0
        self._time_refused = False

    # ------------------------------------------------------------- seam (sync)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def buffered(self) -> int:
        return self._buffered

    @property
    def restored(self) -> bool:
        return self._restored.is_set()

    def publish(self, outcomes: list[Outcome]) -> bool:
        deferred = self._connected and self._restored.is_set()
        step = self.config.max_outcomes_per_entry
        deadline = time.monotonic() + self.config.echo_timeout_s
        for start in range(0, len(outcomes), step):
            chunk = outcomes[start : start + step]
            self._seq += 1
            if deferred:
                self._pending[self._seq] = (deadline, chunk)
                self._pending_count += len(chunk)
            self._enqueue(_Unit(self._seq, encode_outcomes(chunk), len(chunk)))
        self._wake.set()
        return deferred

    def publish_batch_id(self, caller: str, sender: str, sequence: int) -> None:
        """Queue the id of a batch applied here to the end.

        It rides on the newest entry not yet sent when there is one (under load
        there nearly always is: batches finish while a pipeline is in flight),
        so ids add few entries to the stream; else it gets an entry of its own.
        Either way it is published after every outcome of its batch.
        """
        key = (caller, sender, sequence)
        tail = self._buffer[-1] if self._buffer else None
        if tail is not None and not tail.sending and tail.ids < IDS_PER_ENTRY:
            tail.batch_ids.append(key)
            self._buffered_ids += 1
            self._trim()
        else:
            self._seq += 1
            self._enqueue(_Unit(self._seq, NO_OUTCOMES, 0, [key]))
        self._wake.set()

    def filter_probes(self, views: dict[EndpointKey, HealthView]) -> dict[EndpointKey, HealthView]:
        if not self._connected:
            return views  # Redis down: each replica probes on its own (see README)
        held = self._probe_held
        if not any(v.probe_available and k not in held for k, v in views.items()):
            return views
        return {
            k: v._replace(probe_available=False) if v.probe_available and k not in held else v
            for k, v in views.items()
        }

    def _enqueue(self, unit: _Unit) -> None:
        """Buffer a unit; beyond ``buffer_max_outcomes`` (a batch id weighs as
        one outcome, so id entries are bounded too) the oldest units are dropped."""
        self._buffer.append(unit)
        self._buffered += unit.count
        self._buffered_ids += unit.ids
        self._trim()

    def _trim(self) -> None:
        cap = self.config.buffer_max_outcomes
        while self._buffered + self._buffered_ids > cap and len(self._buffer) > 1:
            old = self._buffer.popleft()
            self._buffered -= old.count
            self._buffered_ids -= old.ids
            self.stats.dropped += old.count
            self.stats.batch_ids_dropped += old.ids
            self._settle_locally(old.seq)  # its echo will never come
        excess = self._buffered + self._buffered_ids - cap
        if excess > 0 and self._buffer and not self._buffer[0].sending:
            # One unit left, still over: ids riding on it (up to IDS_PER_ENTRY) passed the
            # cap with no older unit to drop. Its oldest ids go, as an older unit would.
            unit = self._buffer[0]
            drop = min(excess, unit.ids)
            del unit.batch_ids[:drop]
            self._buffered_ids -= drop
            self.stats.batch_ids_dropped += drop

    def _settle_locally(self, seq: int) -> None:
        item = self._pending.pop(seq, None)
        if item is not None:
            self._pending_count -= len(item[1])
            self.core.apply_replicated(item[1], sketches=False, health=True)

    def _sweep_pending(self) -> None:
        """Apply to health, locally, own batches the stream did not bring back in time."""
        now = time.monotonic()
        cap = self.config.buffer_max_outcomes
        while self._pending:
            seq, (deadline, _) = next(iter(self._pending.items()))
            if deadline > now and self._pending_count <= cap:
                break
            self._settle_locally(seq)

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._forever(self._consume_loop), name="redis-consume"),
            asyncio.create_task(self._forever(self._publish_loop), name="redis-publish"),
            asyncio.create_task(self._forever(self._checkpoint_loop), name="redis-checkpoint"),
            asyncio.create_task(self._forever(self._probe_loop), name="redis-probes"),
        ]

    async def _forever(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a loop; a bug in it is logged and the loop restarted, never left dead."""
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "replication task failed; restarting it", extra={"task": loop.__name__}
                )
                await asyncio.sleep(self.config.backoff_max_s)

    async def wait_restored(self, timeout: float) -> bool:
        """Wait until the shared state is loaded; False when ``timeout`` ran out first."""
        try:
            await asyncio.wait_for(self._restored.wait(), timeout)
            return True
        except TimeoutError:
            log.warning(
                "redis unreachable at start: serving from this replica's own state "
                "until it is back",
                extra={"redis": self.config.redacted_url, "waited_s": timeout},
            )
            return False

    async def stop(self, flush_timeout: float = 2.0) -> None:
        """Publish what is buffered (briefly), release probe permits, close."""
        if self._connected and self._buffer:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain(), flush_timeout)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            for key in list(self._probe_held):
                await asyncio.wait_for(
                    self._client.eval(_RELEASE, 1, self.keys.probe(key), self.replica_id), 1.0
                )
        with contextlib.suppress(Exception):
            await self._client.aclose()

    async def _drain(self) -> None:
        while self._buffer:
            await self._publish_some()

    # --------------------------------------------------------- connectivity

    def _ok(self, kind: str) -> None:
        """A command of ``kind`` (``read`` or ``write``) succeeded.

        After a refusal (Redis answered with an error: out of memory, read-only,
        an ACL), only a command of the refused kind ends the outage. A full Redis
        (``maxmemory``, ``noeviction``) refuses every XADD yet answers XREAD, and
        taking that read for the end of it logged ``redis connection lost`` and
        ``restored`` about once a second per replica for as long as it stayed full.
        """
        if self._refused is not None and kind != self._refused:
            return
        self._refused = None
        self._failures = 0
        if not self._connected:
            self._connected = True
            if self._down_since is not None:
                self._republish_before = self._down_since
                self._wake.set()
                log.warning(
                    "redis connection restored",
                    extra={
                        "redis": self.config.redacted_url,
                        "down_s": round(time.monotonic() - self._down_since, 3),
                        "buffered_outcomes": self._buffered,
                    },
                )
                self._down_since = None

    def _failed(self, exc: BaseException, kind: str) -> None:
        """A command of ``kind`` failed (see ``_ok`` for what a refusal changes)."""
        self.stats.errors += 1
        self._failures += 1
        refused = kind if isinstance(exc, ResponseError) else None
        if not (self._connected or self._down_since is None):
            if refused is None:
                self._refused = None  # the connection itself failed: any answer ends it
            return
        self._refused = refused
        self._connected = False
        self._down_since = time.monotonic()
        extra = {
            "redis": self.config.redacted_url,
            "error": f"{type(exc).__name__}: {str(exc)[:200]}",
        }
        if isinstance(exc, AuthenticationError):
            extra["check"] = "the user and password of --redis or --redis-password-file"
        elif isinstance(exc, NoPermissionError):
            extra["check"] = "the ACL of the --redis user (README: keys and commands)"
        log.error(
            "redis connection lost: serving from local state, buffering outcomes", extra=extra
        )

    async def _backoff(self) -> None:
        cfg = self.config
        delay = min(cfg.backoff_max_s, cfg.backoff_min_s * 2 ** min(self._failures, 16))
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    # ---------------------------------------------------------------- loops

    def _requeue_recent(self) -> None:
        """Put units published just before the outage back in front of the buffer.

        Only those sent before Redis went away: a Redis that restarted empty may
        have lost them before every peer read them. Peers de-duplicate.
        """
        before = self._republish_before
        self._republish_before = None
        if before is None:
            return
        cutoff = before - self.config.republish_window_s
        queued = {u.seq for u in self._buffer}
        again = [u for t, u in self._recent if cutoff <= t <= before and u.seq not in queued]
        self._recent.clear()
        for unit in reversed(again):
            self._buffer.appendleft(unit)
            self._buffered += unit.count
            self._buffered_ids += unit.ids

    async def _publish_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._republish_before is not None:
                self._requeue_recent()
            while self._buffer:
                try:
                    await self._publish_some()
                except (RedisError, OSError, TimeoutError) as exc:
                    self._failed(exc, "write")
                    await self._backoff()

    async def _publish_some(self) -> None:
        units = [self._buffer[i] for i in range(min(PUBLISH_BATCH, len(self._buffer)))]
        pipe = self._client.pipeline(transaction=False)
        for unit in units:
            unit.sending = True
            fields: dict[str, str | int | bytes] = {
                "r": self.replica_id,
                "s": unit.seq,
                "o": unit.payload,
            }
            if unit.batch_ids:
                fields["b"] = encode_batch_ids(unit.batch_ids)
            pipe.xadd(
                self.keys.stream,
                fields,
                maxlen=self.config.stream_max_entries,
                approximate=True,
            )
        await pipe.execute()
        self._ok("write")
        now = time.monotonic()
        sent = {id(u) for u in units}
        while self._buffer and id(self._buffer[0]) in sent:  # overflow may have dropped some
            unit = self._buffer.popleft()
            self._buffered -= unit.count
            self._buffered_ids -= unit.ids
            self.stats.published += unit.count
            self.stats.batch_ids_published += unit.ids
            self._recent.append((now, unit))
        cutoff = now - self.config.republish_window_s
        while self._recent and (
            self._recent[0][0] < cutoff or len(self._recent) > self.config.stream_max_entries
        ):
            self._recent.popleft()

    async def _consume_loop(self) -> None:
        block_ms = int(self.config.read_block_s * 1000)
        while True:
            try:
                if not self._restored.is_set():
                    await self._restore()
                    continue
                reply = await self._client.xread(
                    {self.keys.stream: self._last_id}, count=READ_COUNT, block=block_ms
                )
                self._ok("read")
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc, "read")
                await self._backoff()
                continue
            applied = 0
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    applied += self._apply_entry(entry_id, fields, live=True)
            if applied:
                self.on_data()
                # A sketch worker behind (its socket buffer full) slows the reads
                # here, as it slows the writers, instead of queueing without bound.
                await self.core.store.drain()

    def _apply_entry(
        self,
        entry_id: bytes | str,
        fields: dict[bytes, bytes],
        *,
        live: bool,
        writer: str | None = None,
        horizon: int = 0,
        pending: frozenset[int] = frozenset(),
    ) -> int:
        """Apply one stream entry; returns how many outcomes reached the state."""
        entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        self._last_id = entry
        try:
            origin = fields[b"r"].decode()
            seq = int(fields[b"s"])
            if origin == self.replica_id:
                item = self._pending.pop(seq, None)
                if item is not None:
                    self._pending_count -= len(item[1])
                    self.core.apply_replicated(item[1], sketches=False, health=True)
                return 0
            if seq <= self._seen.get(origin, 0):
                self.stats.duplicates += 1
                return 0
            outcomes = decode_outcomes(fields[b"o"])
            raw_ids = fields.get(b"b")
            batch_ids = decode_batch_ids(raw_ids) if raw_ids is not None else []
        except (KeyError, ValueError, UnicodeDecodeError, CodecError):
            self.stats.bad_entries += 1
            return 0
        self._seen[origin] = seq
        self._seen.move_to_end(origin)
        if len(self._seen) > MAX_ORIGINS:
            self._seen.popitem(last=False)
        sketches = health = True
        if origin == writer and seq <= horizon:
            # Already in the checkpoint we restored from (see the package docstring).
            sketches = False
            health = seq in pending
        applied = self.core.apply_replicated(outcomes, sketches=sketches, health=health)
        self.stats.applied += applied
        if batch_ids:
            # Learned even from entries the checkpoint covers: it does not carry the ledger.
            self.on_batch_ids(batch_ids)
            self.stats.batch_ids_learned += len(batch_ids)
        if live:
            millis = int(entry.split("-", 1)[0])
            self.lags.append(max(0.0, self._redis_clock() - millis / 1000.0))
        return applied

    def _redis_clock(self) -> float:
        """Now on Redis's clock (the clock of stream ids), from this replica's."""
        return self.clock() + self._redis_offset

    async def _measure_redis_offset(self) -> None:
        """Measure ``_redis_offset`` with TIME (error: half a round trip).

        An ACL user without TIME (lists written before the router needed it)
        keeps replicating on this replica's clock, as before, warned once.
        """
        before = self.clock()
        try:
            seconds, micros = await self._client.time()
        except NoPermissionError as exc:
            if not self._time_refused:
                self._time_refused = True
                log.warning(
                    "redis refused TIME: trimming the stream and measuring the lag on "
                    "this replica's clock (grant the ACL user +time)",
                    extra={"redis": self.config.redacted_url, "error": str(exc)[:200]},
                )
            return
        after = self.clock()
        self._redis_offset = seconds + micros / 1e6 - (before + after) / 2

    async def _restore(self) -> None:
        """Load the latest checkpoint and replay the stream after it (restart, or late Redis)."""
        started = time.monotonic()
        await self._measure_redis_offset()
        raw = await self._client.get(self.keys.checkpoint)
        writer, horizon, pending, position = None, 0, frozenset[int](), "0-0"
        if raw is not None:
            try:
                doc = decode_checkpoint(raw)
                self._load_checkpoint(doc)
                writer, horizon = str(doc["writer"]), int(doc["horizon"])
                pending = frozenset(int(s) for s in doc["pending"])
                position = str(doc["position"])
                self._seen = OrderedDict((str(o), int(q)) for o, q in doc.get("seen", []))
                self.stats.checkpoints_loaded += 1
            except (CodecError, KeyError, TypeError, ValueError) as exc:
                self.stats.bad_entries += 1
                log.error("ignoring unreadable checkpoint", extra={"error": str(exc)[:200]})
        self._last_id = position
        replayed = 0
        while True:
            entries = await self._client.xrange(
                self.keys.stream, min=f"({self._last_id}", max="+", count=READ_COUNT * 4
            )
            for entry_id, fields in entries:
                replayed += self._apply_entry(
                    entry_id, fields, live=False, writer=writer, horizon=horizon, pending=pending
                )
            await self.core.store.drain()  # a replay of an hour must not queue an hour
            if len(entries) < READ_COUNT * 4:
                break
        self._ok("read")
        await self.core.store.settled()  # the restored sketches, before SERVING
        self.stats.restore_seconds = time.monotonic() - started
        self._restored.set()
        self._wake.set()
        log.info(
            "shared state loaded from redis",
            extra={
                "redis": self.config.redacted_url,
                "checkpoint": raw is not None,
                "replayed_outcomes": replayed,
                "seconds": round(self.stats.restore_seconds, 3),
                "replica": self.replica_id,
            },
        )

    def _load_checkpoint(self, doc: dict[str, Any]) -> None:
        known = self.core.known_endpoints
        store = self.core.store
        now = self.clock()
        for model, provider, last_sample_at, buckets in doc["endpoints"]:
            key = EndpointKey(str(model), str(provider))
            if key in known:
                store.absorb(key, decode_buckets(buckets), last_sample_at, now)
        self.core.health.import_state(doc["health"], known)

    async def _checkpoint_doc(self) -> bytes:
        """This replica's full view, consistent with its stream position: the position,
        health and ids are read in the tick the store's export is asked for, and the
        export holds every write made before it (the sketch worker's included)."""
        now = self.clock()
        head = {
            "position": self._last_id,
            "writer": self.replica_id,
            "horizon": self._seq,
            "pending": list(self._pending),
            "seen": [[o, q] for o, q in self._seen.items()],
            "written_at": now,
            "health": self.core.health.export_state(),
        }
        exported = await self.core.store.export(now)
        endpoints = [
            [key.model, key.provider, last_sample_at, encode_buckets(buckets)]
            for key, last_sample_at, buckets in exported
        ]
        return encode_checkpoint({**head, "endpoints": endpoints})

    async def _checkpoint_loop(self) -> None:
        cfg = self.config
        lease_ms = int(cfg.checkpoint_interval_s * 3 * 1000)
        while True:
            await asyncio.sleep(cfg.checkpoint_interval_s)
            # While writes are refused (a full Redis) the lease write below is how
            # this replica sees them accepted again.
            if not ((self._connected or self._refused == "write") and self._restored.is_set()):
                continue
            try:
                client = self._client
                await self._measure_redis_offset()
                won = await client.set(self.keys.lease, self.replica_id, nx=True, px=lease_ms)
                self._ok("write")  # accepted (a full Redis refuses SET even when NX fails)
                if not won:
                    holder = await client.get(self.keys.lease)
                    if holder is None or holder.decode() != self.replica_id:
                        continue
                    await client.pexpire(self.keys.lease, lease_ms)
                await client.set(
                    self.keys.checkpoint,
                    await self._checkpoint_doc(),
                    ex=int(cfg.checkpoint_ttl_s),
                )
                cutoff_ms = int((self._redis_clock() - cfg.stream_retention_s) * 1000)
                await client.xtrim(
                    self.keys.stream, minid=f"{max(cutoff_ms, 0)}-0", approximate=True
                )
                await client.expire(self.keys.stream, int(cfg.stream_retention_s))
                self.stats.checkpoints_written += 1
                self._ok("write")
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc, "write")

    async def _probe_loop(self) -> None:
        """Hold a fleet-wide permit for each PROBING endpoint this replica wins."""
        cfg = self.config
        ttl_ms = int(self.core.health.config.probe_timeout_s * 1000)
        while True:
            await asyncio.sleep(cfg.probe_poll_s)
            self._sweep_pending()
            if not self._connected:
                continue
            health = self.core.health
            probing = {
                k for k, v in health.views(health.known()).items() if v.state is HealthState.PROBING
            }
            try:
                for key in sorted(probing - self._probe_held):
                    name = self.keys.probe(key)
                    won = await self._client.set(name, self.replica_id, nx=True, px=ttl_ms)
                    if won:
                        self._probe_held.add(key)
                for key in sorted(self._probe_held - probing):
                    await self._client.eval(_RELEASE, 1, self.keys.probe(key), self.replica_id)
                    self._probe_held.discard(key)
                for key in sorted(self._probe_held & probing):
                    name = self.keys.probe(key)
                    if not await self._client.pexpire(name, ttl_ms) and not await self._client.set(
                        name, self.replica_id, nx=True, px=ttl_ms
                    ):
                        self._probe_held.discard(key)  # lost with a Redis restart, and taken
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc, "write")

    @property
    def probe_permits_held(self) -> frozenset[EndpointKey]:
        return frozenset(self._probe_held)
