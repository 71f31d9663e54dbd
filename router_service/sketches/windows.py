"""Rolling windows for one endpoint: rings of time buckets holding digests and counters.

Why rings of buckets: a window over "the last hour" must forget old samples
without keeping them, and a t-digest cannot delete. So time is cut into
buckets aligned to multiples of the bucket width (Unix time), each with its
own TTFT and throughput digests and attempt/success/failure counters, and a
window is the merge of its most recent buckets. Memory is bounded by the ring
sizes regardless of traffic (every digest is bounded, see tdigest.py).

Three rings (widths chosen so each window merges at most 24 digests):

====== ======= ======= =========================================================
ring   width   buckets serves
====== ======= ======= =========================================================
fine   30 s    30      quantiles over 5 min (last 10 buckets), uptime over 15 min
hour   5 min   12      quantiles and uptime over 1 h; the dashboard time series
day    1 h     24      quantiles and uptime over 1 day
====== ======= ======= =========================================================

Expiry is at bucket granularity: a window of ``n`` buckets of width ``w`` holds
the current (partial) bucket and the ``n - 1`` before it, so it spans between
``(n-1)*w`` and ``n*w`` seconds (the "5 minute" window covers 4.5 to 5 min). A
sample recorded at time ``t`` leaves that window exactly at
``(floor(t/w) + n) * w``, no sooner and no later, with or without new traffic.

Everything here is pure: the caller passes ``now``. The merge of a window's
*closed* buckets is cached per ring (it only changes when the ring rolls over
or a late sample lands in a closed bucket), so refreshing an endpoint that
just received data merges two digests per window, not 24.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from router_service.model import RANKING_QUANTILES, MetricSummary, Uptime
from router_service.sketches.tdigest import TDigest, check_finite

__all__ = [
    "DAY",
    "FINE",
    "HOUR",
    "BucketExport",
    "EndpointWindows",
    "RingSpec",
    "SeriesPoint",
    "WindowSummary",
]


@dataclass(frozen=True, slots=True)
class RingSpec:
    """A ring of ``size`` buckets, each ``width`` seconds, aligned to Unix time."""

    name: str
    width: float
    size: int

    def index(self, ts: float) -> int:
        """The bucket number holding timestamp ``ts``."""
        return math.floor(ts / self.width)


FINE = RingSpec("30s", 30.0, 30)
HOUR = RingSpec("5m", 300.0, 12)
DAY = RingSpec("1h", 3600.0, 24)
#: Buckets of the fine ring that keep digests (the 5-minute quantile window);
#: older fine buckets keep only their counters (for 15-minute uptime).
FINE_DIGEST_BUCKETS = 10


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One bucket of the last-hour chart; quantiles are None for a bucket without data."""

    start: float
    end: float
    ttft_p50: float | None
    ttft_p95: float | None
    tps_p50: float | None
    attempts: int
    successes: int
    failures: int


@dataclass(frozen=True, slots=True)
class BucketExport:
    """One bucket in shareable form, for replicas to publish and merge their peers'.

    ``ttft``/``tps`` are ``TDigest.to_bytes()`` (empty bytes when no data); a
    peer merges them with ``TDigest.from_bytes`` and sums the counters.
    """

    ring: str
    start: float
    width: float
    ttft: bytes
    tps: bytes
    attempts: int
    successes: int
    failures: int


@dataclass(frozen=True, slots=True)
class WindowSummary:
    """All windowed numbers of one endpoint at one instant (what the store caches)."""

    ttft_5m: MetricSummary
    ttft_1h: MetricSummary
    ttft_1d: MetricSummary
    tps_5m: MetricSummary
    tps_1h: MetricSummary
    tps_1d: MetricSummary
    uptime_15m: Uptime
    uptime_1h: Uptime
    uptime_1d: Uptime


@dataclass(frozen=True, slots=True)
class ShortSummary:
    """The numbers of ``WindowSummary`` that are cheap to recompute often."""

    ttft_5m: MetricSummary
    tps_5m: MetricSummary
    uptime_15m: Uptime
    uptime_1h: Uptime
    uptime_1d: Uptime


class _Bucket:
    """Digests and counters of one time bucket; digests are created on first value."""

    __slots__ = ("attempts", "failures", "index", "successes", "tps", "ttft")

    def __init__(self, index: int) -> None:
        self.index = index
        self.ttft: TDigest | None = None
        self.tps: TDigest | None = None
        self.attempts = 0
        self.successes = 0
        self.failures = 0


def summarize(digest: TDigest | None) -> MetricSummary:
    """Cached-form quantiles of a digest; an empty one yields count 0 and no quantiles."""
    if digest is None or digest.count == 0:
        return MetricSummary()
    values = digest.quantiles(RANKING_QUANTILES) or []
    return MetricSummary(
        count=digest.count, quantiles=dict(zip(RANKING_QUANTILES, values, strict=True))
    )


class _Ring:
    """A ring of buckets for one granularity, with a cache of its closed buckets' merge."""

    __slots__ = ("_closed", "_closed_version", "_compression", "_slots", "spec")

    def __init__(self, spec: RingSpec, compression: float) -> None:
        self.spec = spec
        self._compression = compression
        self._slots: list[_Bucket | None] = [None] * spec.size
        self._closed_version = 0
        # span -> (current index, version, ttft merge, tps merge) of the closed buckets
        self._closed: dict[int, tuple[int, int, TDigest | None, TDigest | None]] = {}

    def record_group(
        self,
        index: int,
        current: int,
        successes: int,
        failures: int,
        ttfts: list[float],
        tpss: list[float],
        checked: bool = False,
    ) -> bool:
        """``record`` of several outcomes that fall in bucket ``index`` (``current`` is now's).

        Same counters and the same digests (values added in order) as one
        ``record`` per outcome; False when ``index`` is too old for this ring.
        ``checked``: the values are known finite (``TDigest.add_many``).
        """
        if index <= current - self.spec.size:
            return False
        bucket = self._bucket(index)
        if index < current:
            self._closed_version += 1  # a late sample changes a closed bucket
        bucket.attempts += successes + failures
        bucket.successes += successes
        bucket.failures += failures
        if ttfts:
            if bucket.ttft is None:
                bucket.ttft = TDigest(self._compression)
            bucket.ttft.add_many(ttfts, checked=checked)
        if tpss:
            if bucket.tps is None:
                bucket.tps = TDigest(self._compression)
            bucket.tps.add_many(tpss, checked=checked)
        return True

    def _bucket(self, index: int) -> _Bucket:
        slot = index % self.spec.size
        bucket = self._slots[slot]
        if bucket is None or bucket.index != index:
            bucket = _Bucket(index)
            self._slots[slot] = bucket
        return bucket

    def live(self, now: float, span: int) -> list[_Bucket]:
        """Buckets inside the last ``span`` buckets at ``now``, oldest first."""
        current = self.spec.index(now)
        found = [b for b in self._slots if b is not None and current - span < b.index <= current]
        found.sort(key=lambda b: b.index)
        return found

    def uptime(self, now: float, span: int) -> Uptime:
        buckets = self.live(now, span)
        return Uptime(
            attempts=sum(b.attempts for b in buckets),
            successes=sum(b.successes for b in buckets),
            failures=sum(b.failures for b in buckets),
        )

    def merged(self, now: float, span: int) -> tuple[TDigest | None, TDigest | None]:
        """(TTFT, throughput) digests over the last ``span`` buckets at ``now``."""
        current = self.spec.index(now)
        closed_ttft, closed_tps = self._closed_merge(now, span, current)
        head = self._slots[current % self.spec.size]
        if head is None or head.index != current:
            return closed_ttft, closed_tps
        return _combine(closed_ttft, head.ttft), _combine(closed_tps, head.tps)

    def _closed_merge(
        self, now: float, span: int, current: int
    ) -> tuple[TDigest | None, TDigest | None]:
        cached = self._closed.get(span)
        if cached is not None and cached[0] == current and cached[1] == self._closed_version:
            return cached[2], cached[3]
        closed = [b for b in self.live(now, span) if b.index < current]
        ttft = _merge_all([b.ttft for b in closed])
        tps = _merge_all([b.tps for b in closed])
        self._closed[span] = (current, self._closed_version, ttft, tps)
        return ttft, tps

    def prune(self, now: float, keep_digests: int | None = None) -> None:
        """Free buckets that left the ring and digests no window needs any more."""
        current = self.spec.index(now)
        for slot, bucket in enumerate(self._slots):
            if bucket is None:
                continue
            if bucket.index <= current - self.spec.size:
                self._slots[slot] = None
            elif keep_digests is not None and bucket.index <= current - keep_digests:
                bucket.ttft = bucket.tps = None

    def is_empty(self, now: float) -> bool:
        return not self.live(now, self.spec.size)

    def absorb(self, exported: BucketExport, now: float) -> bool:
        """Merge a peer's exported bucket into ours; False when it left the ring."""
        index, current = round(exported.start / self.spec.width), self.spec.index(now)
        if index <= current - self.spec.size or index > current:
            return False
        bucket = self._bucket(index)
        if index < current:
            self._closed_version += 1  # a late sample changes a closed bucket
        bucket.attempts += exported.attempts
        bucket.successes += exported.successes
        bucket.failures += exported.failures
        for name in ("ttft", "tps"):
            data = getattr(exported, name)
            if not data:
                continue
            theirs = TDigest.from_bytes(data)
            ours = getattr(bucket, name)
            if ours is None:
                setattr(bucket, name, theirs)
            else:
                ours.merge(theirs)
        return True


def _merge_all(digests: list[TDigest | None]) -> TDigest | None:
    present = [d for d in digests if d is not None and d.count]
    if not present:
        return None
    if len(present) == 1:
        return present[0].copy()
    return TDigest.merged(present)


def _combine(closed: TDigest | None, head: TDigest | None) -> TDigest | None:
    """Merge of the cached closed-bucket digest and the current bucket, without mutating either."""
    if head is None or head.count == 0:
        return closed
    if closed is None:
        return head
    return TDigest.merged((closed, head))


class EndpointWindows:
    """All rolling windows of one endpoint. Pure: every call takes ``now``.

    ``counted`` in ``record`` is True for a success, False for a failure and
    None for an outcome that must not touch uptime (a client error).
    """

    __slots__ = ("_day", "_fine", "_hour")

    def __init__(self, compression: float = 100.0) -> None:
        self._fine = _Ring(FINE, compression)
        self._hour = _Ring(HOUR, compression)
        self._day = _Ring(DAY, compression)

    def record(
        self,
        ts: float,
        now: float,
        counted: bool | None,
        ttft_ms: float | None = None,
        tps: float | None = None,
    ) -> bool:
        """Put one outcome in every ring that still covers ``ts``.

        ``ts`` after ``now`` (clock skew) is treated as ``now``: it lands in the
        current bucket. Returns False when ``ts`` is older than every window.
        """
        return self.record_group(
            ts,
            now,
            1 if counted is True else 0,
            1 if counted is False else 0,
            [] if ttft_ms is None else [ttft_ms],
            [] if tps is None else [tps],
        )

    def record_group(
        self,
        ts: float,
        now: float,
        successes: int,
        failures: int,
        ttfts: list[float],
        tpss: list[float],
        checked: bool = False,
    ) -> bool:
        """``record`` of several outcomes whose timestamps fall in the same bucket of
        every ring as ``ts`` (the store groups a batch by bucket): one pass per ring
        instead of one per outcome. Returns False when ``ts`` is older than every window.
        ``checked``: the values are known finite; otherwise they are checked once
        here (a non-finite one raises ValueError before any ring changes).
        """
        if not checked:
            check_finite(ttfts)
            check_finite(tpss)
        ts = min(ts, now)
        recorded = False
        for ring in (self._fine, self._hour, self._day):
            spec = ring.spec
            recorded = (
                ring.record_group(
                    spec.index(ts), spec.index(now), successes, failures, ttfts, tpss, True
                )
                or recorded
            )
        return recorded

    def summary(self, now: float) -> WindowSummary:
        """Quantiles and uptime of every window at ``now`` (merges digests: not for hot paths)."""
        ttft_5m, tps_5m = self._fine.merged(now, FINE_DIGEST_BUCKETS)
        ttft_1h, tps_1h = self._hour.merged(now, HOUR.size)
        ttft_1d, tps_1d = self._day.merged(now, DAY.size)
        return WindowSummary(
            ttft_5m=summarize(ttft_5m),
            ttft_1h=summarize(ttft_1h),
            ttft_1d=summarize(ttft_1d),
            tps_5m=summarize(tps_5m),
            tps_1h=summarize(tps_1h),
            tps_1d=summarize(tps_1d),
            uptime_15m=self._fine.uptime(now, FINE.size),
            uptime_1h=self._hour.uptime(now, HOUR.size),
            uptime_1d=self._day.uptime(now, DAY.size),
        )

    def short_summary(self, now: float) -> ShortSummary:
        """The 5-minute quantiles and every uptime: ``summary`` without the hour's and
        the day's digest merges (the store refreshes those less often)."""
        ttft_5m, tps_5m = self._fine.merged(now, FINE_DIGEST_BUCKETS)
        return ShortSummary(
            ttft_5m=summarize(ttft_5m),
            tps_5m=summarize(tps_5m),
            uptime_15m=self._fine.uptime(now, FINE.size),
            uptime_1h=self._hour.uptime(now, HOUR.size),
            uptime_1d=self._day.uptime(now, DAY.size),
        )

    def epoch(self, now: float) -> tuple[int, int, int]:
        """Current bucket of each ring: when it changes, some data may have left a window."""
        return (FINE.index(now), HOUR.index(now), DAY.index(now))

    def prune(self, now: float) -> None:
        """Free expired buckets and fine-ring digests older than the 5-minute window."""
        self._fine.prune(now, keep_digests=FINE_DIGEST_BUCKETS)
        self._hour.prune(now)
        self._day.prune(now)

    def is_empty(self, now: float) -> bool:
        """True when no window holds anything at ``now``."""
        return self._day.is_empty(now) and self._fine.is_empty(now) and self._hour.is_empty(now)

    def series(self, now: float) -> list[SeriesPoint]:
        """The last hour as 12 five-minute points, oldest first, empty buckets included."""
        current = HOUR.index(now)
        by_index = {b.index: b for b in self._hour.live(now, HOUR.size)}
        points = []
        for index in range(current - HOUR.size + 1, current + 1):
            bucket = by_index.get(index)
            points.append(_series_point(index, bucket))
        return points

    def absorb(self, exported: Iterable[BucketExport], now: float) -> None:
        """Merge exported buckets (``export`` of a peer or a checkpoint) into these windows.

        Digests merge and counters add, so absorbing is exact for counters and
        within the digest's own error for quantiles; buckets that have left
        their ring at ``now`` are skipped.
        """
        rings = {r.spec.name: r for r in (self._fine, self._hour, self._day)}
        for item in exported:
            ring = rings.get(item.ring)
            if ring is not None and ring.spec.width == item.width:
                ring.absorb(item, now)

    def export(self, now: float) -> list[BucketExport]:
        """Every live bucket of every ring in serialised form (the replica-sharing hook)."""
        out: list[BucketExport] = []
        for ring in (self._fine, self._hour, self._day):
            for b in ring.live(now, ring.spec.size):
                out.append(
                    BucketExport(
                        ring=ring.spec.name,
                        start=b.index * ring.spec.width,
                        width=ring.spec.width,
                        ttft=b.ttft.to_bytes() if b.ttft is not None else b"",
                        tps=b.tps.to_bytes() if b.tps is not None else b"",
                        attempts=b.attempts,
                        successes=b.successes,
                        failures=b.failures,
                    )
                )
        return out


def _series_point(index: int, bucket: _Bucket | None) -> SeriesPoint:
    start = index * HOUR.width
    if bucket is None:
        return SeriesPoint(start, start + HOUR.width, None, None, None, 0, 0, 0)
    ttft = bucket.ttft.quantiles((0.5, 0.95)) if bucket.ttft is not None else None
    tps = bucket.tps.quantile(0.5) if bucket.tps is not None else None
    return SeriesPoint(
        start=start,
        end=start + HOUR.width,
        ttft_p50=ttft[0] if ttft else None,
        ttft_p95=ttft[1] if ttft else None,
        tps_p50=tps,
        attempts=bucket.attempts,
        successes=bucket.successes,
        failures=bucket.failures,
    )
