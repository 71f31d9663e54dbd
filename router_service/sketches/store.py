"""The stats store: outcomes in, cached per-endpoint stats out.

Why a store with an explicit ``refresh``: ranking reads P50/P95 on every
request, and merging up to 24 digests per window per metric costs tens of
microseconds per endpoint. So writes (``record``) only append to bucket
digests and mark the endpoint dirty; ``refresh`` (called by the server after
each ingested batch and about once a second) recomputes ``EndpointStats`` for
dirty endpoints and for endpoints whose rings rolled over; reads (``stats``,
``snapshot``) return the cached immutable value: a dict lookup, O(1), no merge.

Why a Protocol: a later store shared by router replicas (Redis) implements the
same ``StatsStore`` and nothing in ranking changes. ``bucket_digests`` is the
hook for that: it exports every live bucket as serialised digests plus
counters, which a peer merges into its own view (digests are mergeable,
counters add).

Uptime and client errors: an outcome whose ``error_class`` is CLIENT_ERROR
(400/422: the caller's fault) or CANCELLED (a hedge's loser, given up by the
caller) counts as neither attempt, success nor failure, so
``Uptime.successes + failures == attempts`` holds and a misbehaving caller
cannot lower an endpoint's uptime. Its TTFT/throughput, if measured, are still
real observations of the endpoint and are recorded.

Timestamps: outcomes are bucketed by ``outcome.timestamp``; older than the
longest window (1 day) they are ignored, in the future (clock skew between
pods, bounded by outcome validation) they land in the current bucket.

Recent view: beside the windows each endpoint has a decayed TTFT and failure
ratio (``router_service.sketches.recent``), updated per outcome on the
router's clock and published with the other stats at refresh.

Thread safety: mutations and refresh hold one lock; ``stats``/``snapshot``
only read a dict of immutable values and need none.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from router_common.domain import NOT_ATTEMPTS, Clock, EndpointKey, ErrorClass
from router_service.model import EMPTY_STATS, EndpointStats, Outcome
from router_service.sketches.recent import DEFAULT_RECENT_CONFIG, RecentConfig, RecentTracker
from router_service.sketches.tdigest import check_finite
from router_service.sketches.windows import (
    DAY,
    FINE,
    HOUR,
    BucketExport,
    EndpointWindows,
    SeriesPoint,
    ShortSummary,
    WindowSummary,
)

__all__ = ["BucketExport", "EndpointExport", "InMemoryStatsStore", "SeriesPoint", "StatsStore"]

#: One endpoint in a checkpoint: its key, its newest sample time, its live buckets.
EndpointExport = tuple[EndpointKey, float | None, list[BucketExport]]


@runtime_checkable
class StatsStore(Protocol):
    """What the router needs from a stats backend (in-memory now, shared later)."""

    def record(self, outcome: Outcome) -> None:
        """Add one outcome to its endpoint's windows; does not recompute quantiles."""
        ...

    def record_many(self, outcomes: Iterable[Outcome]) -> None:
        """Add a batch of outcomes; does not recompute quantiles."""
        ...

    def refresh(self, now: float | None = None) -> None:
        """Recompute cached stats of endpoints that changed or whose windows rolled over."""
        ...

    def refresh_steps(self, now: float | None = None) -> Iterator[None]:
        """``refresh``, one endpoint per step (the caller yields to its loop between steps)."""
        ...

    def stats(self, key: EndpointKey) -> EndpointStats:
        """Cached stats of one endpoint (EMPTY_STATS if unknown). O(1), never merges."""
        ...

    def snapshot(self, keys: Iterable[EndpointKey]) -> dict[EndpointKey, EndpointStats]:
        """Cached stats of several endpoints, as of the last refresh."""
        ...

    def timeseries(self, key: EndpointKey) -> list[SeriesPoint]:
        """The last hour of one endpoint in 5-minute points, oldest first."""
        ...

    def retain(self, keys: Collection[EndpointKey]) -> None:
        """Drop every endpoint not in ``keys``; the others keep their data."""
        ...

    def keys(self) -> frozenset[EndpointKey]:
        """Endpoints that hold state."""
        ...

    def bucket_digests(self, key: EndpointKey, now: float | None = None) -> list[BucketExport]:
        """Every live bucket of ``key`` serialised, for replicas to publish and merge."""
        ...

    def absorb(
        self,
        key: EndpointKey,
        exported: Iterable[BucketExport],
        last_sample_at: float | None,
        now: float | None = None,
    ) -> None:
        """Merge exported buckets of ``key`` (a peer's checkpoint) into this store."""
        ...

    async def export(self, now: float) -> list[EndpointExport]:
        """Every endpoint's live buckets and newest sample time, for a checkpoint:
        consistent with every write made before the call (async: the sketch
        worker answers it over its socket)."""
        ...

    async def settled(self) -> None:
        """Return once every write made before the call is in ``stats``/``snapshot``."""
        ...

    async def drain(self) -> None:
        """Wait while writes are queued beyond the store's bound (the sketch worker's
        socket buffer); writers call it between batches, so they slow down instead
        of queueing without bound. In process: returns at once."""
        ...


#: Bounds of an endpoint's queue of groups (``_Pending``): a store nobody
#: refreshes must not grow without bound, and a flush is exact at any point.
_PENDING_VALUES = 4096
_PENDING_GROUPS = 64


@dataclass(slots=True)
class _Entry:
    windows: EndpointWindows
    recent: RecentTracker
    last_sample_at: float | None = None
    epoch: tuple[int, int, int] | None = None  # rings' current buckets at last compute
    #: When the hour and day windows were last merged (see ``long_refresh_s``).
    long_at: float = -math.inf
    #: When the 5-minute window and the uptimes were last merged (``short_refresh_s``).
    short_at: float = -math.inf
    #: Groups recorded but not yet added to ``windows`` (``_flush`` adds them, in
    #: order, before anything reads or changes the windows), see ``_Pending``.
    pending: list[_Pending] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    """One ``EndpointWindows.record_group`` call not made yet, or several merged.

    Why: the ingestion path applies a batch in slices of ~64 outcomes, so each
    slice brings ~8 outcomes per endpoint, and adding them to three rings' two
    digests (six calls) cost more than the outcomes themselves. Groups are
    queued instead, and a group that lands in the same buckets at the same
    ring positions (``where``) as the last queued one is merged into it: the
    counters add, the values are appended in order. ``record_group`` of the
    merged group gives the same windows as the calls one by one (the digests
    take values in the same order and ``TDigest.add_many`` flushes at the same
    points; the counters are sums), and only the last group is ever merged
    into, so each bucket receives its values in recording order. Nothing can
    read the windows before ``_flush``: stats are published by ``refresh``.
    """

    where: tuple[int, int, int, int, int, int]
    ts: float
    now: float
    successes: int
    failures: int
    ttfts: list[float]
    tpss: list[float]


@dataclass(slots=True)
class _Group:
    """Outcomes of one batch that fall in the same bucket of every ring of one endpoint."""

    ts: float
    successes: int = 0
    failures: int = 0
    ttfts: list[float] = field(default_factory=list)
    tpss: list[float] = field(default_factory=list)


class InMemoryStatsStore:
    """Single-process ``StatsStore``: windows per endpoint, stats cached until refresh."""

    def __init__(
        self,
        clock: Clock,
        compression: float = 100.0,
        recent_config: RecentConfig = DEFAULT_RECENT_CONFIG,
        long_refresh_s: float = 1.0,
        short_refresh_s: float = 0.5,
    ) -> None:
        """``long_refresh_s``: how stale the hour and day windows may get in
        ``refresh_steps`` (the background refresh under ingestion). Merging
        them is two thirds of a refresh (~1.2 of ~1.8 ms per endpoint), and
        0.1 s of new data cannot move an hour's quantiles: re-merging them
        ten times a second took ~10% of the serving loop under full
        ingestion (bench/README.md section 7). The 5-minute window, the
        uptime counters and the recent view are recomputed every time;
        ``refresh`` and a ring rolling over recompute everything.

        ``short_refresh_s``: the same for the 5-minute window and the uptime
        counters. Between their merges a background pass only takes the
        recent view (``RecentTracker``, what ranking follows change with, read
        every pass) and the newest sample time. Merging the 5-minute digests
        ten times a second cost ~3.4 ms per pass for 8 endpoints, 3-5% of the
        serving loop under full ingestion, taken from ranking (bench/README.md
        section 7); half a second more on a 5-minute quantile moves nothing,
        and exploration's sample count reads the recent view's too."""
        self._clock = clock
        self._long_refresh_s = long_refresh_s
        self._short_refresh_s = short_refresh_s
        self._compression = compression
        self._recent_config = recent_config
        self._lock = threading.Lock()
        self._entries: dict[EndpointKey, _Entry] = {}
        self._cache: dict[EndpointKey, EndpointStats] = {}
        self._dirty: set[EndpointKey] = set()
        #: Outcomes dropped for being older than every window (for metrics).
        self.ignored_too_old = 0

    # ---------------------------------------------------------------- writes

    def record(self, outcome: Outcome) -> None:
        self.record_many((outcome,))

    def record_many(self, outcomes: Iterable[Outcome]) -> None:
        """Add a batch, endpoint by endpoint: each ring's bucket takes a group's
        counters and values in one step (``EndpointWindows.record_group``), and
        the recent view takes the endpoint's attempts in one call. The result is
        what ``record`` per outcome gives: same counters, same values in each
        bucket's digest in the same order, same recent view (fed in order: its
        decay depends on it)."""
        now = self._clock()
        by_endpoint = group_by_endpoint(outcomes)
        with self._lock:
            for key, same in by_endpoint.items():
                self._record_endpoint(key, same, now)

    def record_grouped(self, by_endpoint: Mapping[EndpointKey, list[Outcome]]) -> None:
        """``record_many`` of outcomes already grouped by endpoint, each list in
        recording order (the ingestion path groups a batch once for the store and
        the dashboard series)."""
        now = self._clock()
        with self._lock:
            for key, same in by_endpoint.items():
                self._record_endpoint(key, same, now)

    def _record_endpoint(self, key: EndpointKey, outcomes: list[Outcome], now: float) -> None:
        stamps = [o.timestamp if o.timestamp <= now else now for o in outcomes]
        lo, hi = min(stamps), max(stamps)
        floor = math.floor
        fine_w, hour_w, day_w = FINE.width, HOUR.width, DAY.width
        now_day = floor(now / day_w)
        oldest_day = now_day - DAY.size
        lo_day = floor(lo / day_w)
        if floor(hi / day_w) <= oldest_day:
            self.ignored_too_old += len(outcomes)  # older than every window: no state
            return
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(
                EndpointWindows(self._compression), RecentTracker(self._recent_config)
            )
        client_error, cancelled = NOT_ATTEMPTS
        # counted: True a success, False a failure, None not counted (the caller's
        # fault, or given up by the caller).
        counted = [
            None if (c := o.error_class) is client_error or c is cancelled else o.success
            for o in outcomes
        ]
        lo_fine, lo_hour = floor(lo / fine_w), floor(lo / hour_w)
        if (
            lo_day <= oldest_day
            or lo_fine != floor(hi / fine_w)
            or lo_hour != floor(hi / hour_w)
            or lo_day != floor(hi / day_w)
        ):
            # Stragglers, or a batch across a bucket edge: bucket by bucket.
            kept = self._record_by_bucket(entry, outcomes, counted, stamps, now)
            attempts = [
                (
                    None if counted[i] is None else not counted[i],
                    outcomes[i].ttft_ms,
                    _waited(outcomes[i]),
                )
                for i in kept
            ]
            newest = max(stamps[i] for i in kept)
        else:
            # The common case: every outcome in the same bucket of every ring.
            ttfts = [o.ttft_ms for o in outcomes if o.ttft_ms is not None]
            tpss = [o.tokens_per_second for o in outcomes if o.tokens_per_second is not None]
            # Refused here, not when the queue is added to the windows: a digest
            # takes only finite values (validation sees to it on the ingestion
            # path; a direct caller gets the digest's ValueError, as before).
            check_finite(ttfts)
            check_finite(tpss)
            where = (
                lo_fine,
                lo_hour,
                lo_day,
                floor(now / fine_w),
                floor(now / hour_w),
                now_day,
            )
            self._queue(
                entry,
                where,
                lo,
                now,
                counted.count(True),
                failures := counted.count(False),
                ttfts,
                tpss,
            )
            # Only a failure (a timeout) or an uncounted outcome (a cancelled one)
            # can have waited: a batch without either skips the check.
            waited = _waited if failures or None in counted else _not_waited
            attempts = [
                (None if c is None else not c, o.ttft_ms, waited(o))
                for c, o in zip(counted, outcomes, strict=True)
            ]
            newest = hi
        # The recent estimate runs on the router's clock (as health does).
        entry.recent.record_many(now, attempts)
        if entry.last_sample_at is None or newest > entry.last_sample_at:
            entry.last_sample_at = newest
        self._dirty.add(key)

    @staticmethod
    def _queue(
        entry: _Entry,
        where: tuple[int, int, int, int, int, int],
        ts: float,
        now: float,
        successes: int,
        failures: int,
        ttfts: list[float],
        tpss: list[float],
    ) -> None:
        """Queue ``record_group(ts, now, ...)`` on ``entry``'s windows (``_Pending``);
        ``where`` is the ring indexes of ``ts`` and of ``now``, fine, hour, day."""
        pending = entry.pending
        if pending:
            last = pending[-1]
            if last.where == where:
                last.successes += successes
                last.failures += failures
                last.ttfts += ttfts
                last.tpss += tpss
                if len(last.ttfts) + len(last.tpss) >= _PENDING_VALUES:
                    InMemoryStatsStore._flush(entry)
                return
        pending.append(_Pending(where, ts, now, successes, failures, ttfts, tpss))
        if len(pending) >= _PENDING_GROUPS:
            InMemoryStatsStore._flush(entry)

    @staticmethod
    def _flush(entry: _Entry) -> None:
        """Add the queued groups to the windows, in the order they were recorded."""
        if not entry.pending:
            return
        windows = entry.windows
        for group in entry.pending:
            windows.record_group(
                group.ts,
                group.now,
                group.successes,
                group.failures,
                group.ttfts,
                group.tpss,
                checked=True,  # by _record_endpoint, before queueing
            )
        entry.pending = []

    def _record_by_bucket(
        self,
        entry: _Entry,
        outcomes: list[Outcome],
        counted: list[bool | None],
        stamps: list[float],
        now: float,
    ) -> list[int]:
        """Group outcomes by bucket, dropping those older than every window; returns
        the indexes of the outcomes kept (at least one: the caller checked)."""
        fine_w, hour_w, day_w = FINE.width, HOUR.width, DAY.width
        oldest_day = DAY.index(now) - DAY.size
        floor = math.floor
        groups: dict[tuple[int, int, int], _Group] = {}
        kept = []
        for i, outcome in enumerate(outcomes):
            ts = stamps[i]
            day = floor(ts / day_w)
            if day <= oldest_day:
                self.ignored_too_old += 1
                continue
            kept.append(i)
            group_key = (floor(ts / fine_w), floor(ts / hour_w), day)
            group = groups.get(group_key)
            if group is None:
                group = groups[group_key] = _Group(ts)
            effect = counted[i]
            if effect is not None:
                if effect:
                    group.successes += 1
                else:
                    group.failures += 1
            if outcome.ttft_ms is not None:
                group.ttfts.append(outcome.ttft_ms)
            if outcome.tokens_per_second is not None:
                group.tpss.append(outcome.tokens_per_second)
        for group in groups.values():  # as in the common case, before any is queued
            check_finite(group.ttfts)
            check_finite(group.tpss)
        now_where = (floor(now / fine_w), floor(now / hour_w), floor(now / day_w))
        for group_key, group in groups.items():
            self._queue(
                entry,
                group_key + now_where,
                group.ts,
                now,
                group.successes,
                group.failures,
                group.ttfts,
                group.tpss,
            )
        return kept

    def refresh(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        with self._lock:
            for key, entry in self._entries.items():
                epoch = entry.windows.epoch(now)
                if key in self._dirty or epoch != entry.epoch:
                    self._recompute(key, entry, now, epoch)
            self._dirty.clear()

    def refresh_steps(self, now: float | None = None) -> Iterator[None]:
        """``refresh`` one endpoint at a time, yielding between endpoints.

        A full refresh merges every window's digests (~1 ms per endpoint); run
        on the serving loop in one go it stalled every RankProviders call behind
        it. The router's refresh loop yields to the loop at each step. Endpoints
        recorded to after their step are picked up by the next refresh.
        """
        now = self._clock() if now is None else now
        for key in list(self._entries):
            with self._lock:
                entry = self._entries.get(key)
                flushed = entry is not None and bool(entry.pending)
                if entry is not None and flushed:
                    # Its own step: the groups queued since the last refresh
                    # (~0.1 s of outcomes) are a digest flush's worth of work,
                    # and together with the merges below one step would hold
                    # the loop about twice as long.
                    self._flush(entry)
            if flushed:
                yield
            with self._lock:
                entry = self._entries.get(key)
                if entry is None:
                    continue
                epoch = entry.windows.epoch(now)
                if key not in self._dirty and epoch == entry.epoch:
                    continue
                cached = self._cache.get(key)
                if cached is not None and epoch == entry.epoch:
                    if now - entry.short_at < self._short_refresh_s:
                        # Stays dirty: its windows are merged once the cadence allows.
                        self._cache[key] = replace(
                            cached,
                            recent=entry.recent.estimate(),
                            last_sample_at=entry.last_sample_at,
                        )
                        continue
                    self._dirty.discard(key)
                    if now - entry.long_at < self._long_refresh_s:
                        self._recompute(key, entry, now, epoch, keep_long=cached)
                    else:
                        self._recompute(key, entry, now, epoch)
                else:
                    self._dirty.discard(key)
                    self._recompute(key, entry, now, epoch)
            yield

    def _recompute(
        self,
        key: EndpointKey,
        entry: _Entry,
        now: float,
        epoch: tuple[int, int, int],
        keep_long: EndpointStats | None = None,
    ) -> None:
        """Cache the endpoint's stats at ``now``; with ``keep_long``, its hour and day
        quantiles are kept from there instead of re-merged (``long_refresh_s``)."""
        self._flush(entry)
        entry.windows.prune(now)
        entry.short_at = now
        if keep_long is None:
            full = entry.windows.summary(now)
            long = (full.ttft_1h, full.ttft_1d, full.tps_1h, full.tps_1d)
            s: WindowSummary | ShortSummary = full
            entry.epoch, entry.long_at = epoch, now
        else:
            s = entry.windows.short_summary(now)
            long = (keep_long.ttft_1h, keep_long.ttft_1d, keep_long.tps_1h, keep_long.tps_1d)
        ttft_1h, ttft_1d, tps_1h, tps_1d = long
        self._cache[key] = EndpointStats(
            ttft_5m=s.ttft_5m,
            ttft_1h=ttft_1h,
            ttft_1d=ttft_1d,
            tps_5m=s.tps_5m,
            tps_1h=tps_1h,
            tps_1d=tps_1d,
            uptime_15m=s.uptime_15m,
            uptime_1h=s.uptime_1h,
            uptime_1d=s.uptime_1d,
            last_sample_at=entry.last_sample_at,
            recent=entry.recent.estimate(),
        )

    def absorb(
        self,
        key: EndpointKey,
        exported: Iterable[BucketExport],
        last_sample_at: float | None,
        now: float | None = None,
    ) -> None:
        """Merge exported buckets of ``key`` (a replica checkpoint) into this store."""
        now = self._clock() if now is None else now
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                # The recent (Peak-EWMA) view is not checkpointed: it is seconds deep
                # and refills from the live stream.
                entry = self._entries[key] = _Entry(
                    EndpointWindows(self._compression), RecentTracker(self._recent_config)
                )
            self._flush(entry)
            entry.windows.absorb(exported, now)
            if last_sample_at is not None and (
                entry.last_sample_at is None or last_sample_at > entry.last_sample_at
            ):
                entry.last_sample_at = last_sample_at
            self._dirty.add(key)

    async def export(self, now: float) -> list[EndpointExport]:
        return self.export_now(now)

    def export_now(self, now: float) -> list[EndpointExport]:
        """``export``, synchronously (the sketch worker answers its requests with it)."""
        return [
            (key, self.last_sample_at(key), self.bucket_digests(key, now))
            for key in sorted(self.keys())
        ]

    async def settled(self) -> None:
        self.refresh()

    async def drain(self) -> None:
        return None

    def last_sample_at(self, key: EndpointKey) -> float | None:
        """When the newest sample of ``key`` was taken (None without data)."""
        entry = self._entries.get(key)
        return entry.last_sample_at if entry is not None else None

    def retain(self, keys: Collection[EndpointKey]) -> None:
        keep = frozenset(keys)
        with self._lock:
            for key in [k for k in self._entries if k not in keep]:
                del self._entries[key]
                self._cache.pop(key, None)
                self._dirty.discard(key)

    # ----------------------------------------------------------------- reads

    def stats(self, key: EndpointKey) -> EndpointStats:
        return self._cache.get(key, EMPTY_STATS)

    def snapshot(self, keys: Iterable[EndpointKey]) -> dict[EndpointKey, EndpointStats]:
        cache = self._cache
        return {k: cache.get(k, EMPTY_STATS) for k in keys}

    def keys(self) -> frozenset[EndpointKey]:
        return frozenset(self._entries)

    def timeseries(self, key: EndpointKey) -> list[SeriesPoint]:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return EndpointWindows(self._compression).series(now)
            self._flush(entry)
            return entry.windows.series(now)

    def bucket_digests(self, key: EndpointKey, now: float | None = None) -> list[BucketExport]:
        now = self._clock() if now is None else now
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return []
            self._flush(entry)
            return entry.windows.export(now)


def group_by_endpoint(outcomes: Iterable[Outcome]) -> dict[EndpointKey, list[Outcome]]:
    """Outcomes by endpoint, each list in the order given (what ``record_grouped`` takes)."""
    by_endpoint: dict[EndpointKey, list[Outcome]] = {}
    for outcome in outcomes:
        same = by_endpoint.get(outcome.endpoint)
        if same is None:
            by_endpoint[outcome.endpoint] = [outcome]
        else:
            same.append(outcome)
    return by_endpoint


def _not_waited(outcome: Outcome) -> None:
    """``_waited`` for a batch without failures or uncounted outcomes (nothing waited)."""
    return None


#: Attempts that ended without a first token because someone stopped waiting: the
#: sidecar's first-token timeout, or the caller giving up on a hedge's loser.
_GAVE_UP = frozenset({ErrorClass.TIMEOUT, ErrorClass.CANCELLED})


def _waited(outcome: Outcome) -> float | None:
    """How long an attempt given up without a first token waited (a lower bound of
    its TTFT), for the recent view; None for every other outcome
    (``RecentTracker._raise_to``)."""
    if outcome.error_class in _GAVE_UP and outcome.ttft_ms is None:
        return outcome.duration_ms
    return None
