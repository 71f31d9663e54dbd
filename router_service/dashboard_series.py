"""Short-bucket history for the dashboard: per endpoint, what each 10 s / 1 min looked like.

Why a separate, small structure and not the ranking sketches: ranking needs
5-minute/1-hour/1-day t-digests; a person watching an incident needs to see
it *as it happens*, which 5-minute points cannot show (a one-minute demo is
one dot). Two rings per endpoint:

====  =======  =======  =========================================
ring  bucket   buckets  serves
====  =======  =======  =========================================
fine  10 s     90       the last 5 and 15 minutes
hour  60 s     60       the last hour, one point per minute
====  =======  =======  =========================================

Each bucket counts attempts, successes and failures and keeps TTFT and
throughput in sparse log-spaced histograms (bins 2% wide, so a percentile is
within 1% of the exact one), so memory per endpoint is bounded (150 buckets,
at most a few hundred bins each, usually a dozen) whatever the traffic, and
recording is O(1). Buckets are aligned to Unix time, keyed by the outcome's
own start time clamped to the router's clock (like the sketches), so a
sidecar's late batch lands in the minute it happened.

Health over time comes from the health tracker's transitions (the
``on_transition`` hook), kept per endpoint in a bounded deque: a bucket's
health is the worst state the endpoint was in at any moment of it. A bucket
with no attempts while healthy is "no_data", never "healthy": an endpoint
nobody called has not been shown to work.

Pure and clock-injectable; a lock makes it safe to share between the gRPC
worker threads that record and the HTTP handlers that read.
"""

from __future__ import annotations

import math
import threading
from collections import _count_elements, deque  # type: ignore[attr-defined]
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from math import floor
from typing import Any, Protocol

from router_common.domain import NOT_ATTEMPTS, Clock, EndpointKey, ErrorClass
from router_service.health import Transition
from router_service.model import HealthState, Outcome, rounded_ratio

__all__ = ["RANGES", "DashboardSeries", "Points", "RangeSpec", "SeriesSink"]

#: One endpoint's points over a range, oldest first, as JSON-ready dicts.
Points = list[dict[str, Any]]


class SeriesSink(Protocol):
    """What the router core writes to and the metrics API reads from: a
    ``DashboardSeries`` in process, or one in the sketch worker
    (``router_service.sketch_worker``), hence the async read."""

    def record_many(self, outcomes: Iterable[Outcome]) -> None: ...

    def record_grouped(self, by_endpoint: Mapping[EndpointKey, list[Outcome]]) -> None: ...

    def on_transition(self, transition: Transition) -> None: ...

    def retain(self, keys: Iterable[EndpointKey]) -> None: ...

    async def points_of(
        self, wanted: Sequence[tuple[EndpointKey, HealthState]], range_name: str, min_samples: int
    ) -> list[Points]:
        """``DashboardSeries.points`` of each (endpoint, its current health state)."""
        ...


#: Relative width of a histogram bin; the bin's geometric middle is reported.
BIN_RATIO = 1.02
_LOG_BIN = math.log(BIN_RATIO)
#: Transitions kept per endpoint (an hour of even heavy flapping).
TRANSITIONS_KEPT = 512
#: Worst first: the strip shows the worst state a bucket saw.
SEVERITY = {
    HealthState.HEALTHY: 0,
    HealthState.DEGRADED: 1,
    HealthState.PROBING: 2,
    HealthState.EJECTED: 3,
}
NO_DATA = "no_data"


@dataclass(frozen=True, slots=True)
class RangeSpec:
    """A time range the dashboard offers: how many buckets of which ring."""

    name: str
    ring: str
    width: float
    count: int


#: The ranges ``/timeseries?range=`` accepts, shortest first; "15m" is the default.
RANGES: dict[str, RangeSpec] = {
    "5m": RangeSpec("5m", "fine", 10.0, 30),
    "15m": RangeSpec("15m", "fine", 10.0, 90),
    "1h": RangeSpec("1h", "hour", 60.0, 60),
}
DEFAULT_RANGE = "15m"
_RINGS = {"fine": (10.0, 90), "hour": (60.0, 60)}


_INV_LOG_BIN = 1.0 / _LOG_BIN
_ZERO_BIN = -(10**6)


def _bin_value(index: int) -> float:
    return 0.0 if index <= _ZERO_BIN else BIN_RATIO ** (index + 0.5)


def _quantile(hist: dict[int, int], total: int, q: float) -> float | None:
    """The value at quantile ``q`` of a sparse histogram (nearest rank)."""
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return _bin_value(index)
    return None  # unreachable: the counts add up to total


@dataclass(slots=True)
class _Counts:
    """Attempts and TTFT/throughput histograms: a bucket's, or a batch's tally for one."""

    successes: int = 0
    failures: int = 0
    ttft: dict[int, int] = field(default_factory=dict)
    ttft_n: int = 0
    tps: dict[int, int] = field(default_factory=dict)
    tps_n: int = 0

    @property
    def attempts(self) -> int:
        return self.successes + self.failures

    def add(self, other: _Counts) -> None:
        self.successes += other.successes
        self.failures += other.failures
        if other.ttft_n:
            _add_counts(self.ttft, other.ttft)
            self.ttft_n += other.ttft_n
        if other.tps_n:
            _add_counts(self.tps, other.tps)
            self.tps_n += other.tps_n


#: Error classes that count as a failure of the endpoint.
_AGAINST = frozenset(e for e in ErrorClass if e.counts_against_endpoint)


#: ``hist[index] = hist.get(index, 0) + 1`` for each index of ``bins``, in C: the
#: loop ``Counter.update`` runs (CPython's ``_collections._count_elements``, with a
#: pure-Python fallback of the same statement); ~40% cheaper per value than the
#: Python loop it replaces (``_Bucket.settle`` counts queued bins with it).
_count_into: Callable[[dict[int, int], Iterable[int]], None] = _count_elements


def _tally(
    outcomes: Iterable[Outcome], now: float, tallies: dict[tuple[EndpointKey, int, int], _Counts]
) -> None:
    """Add each outcome to its (endpoint, fine bucket, hour bucket) tally."""
    (fine_w, _), (hour_w, _) = _RINGS["fine"], _RINGS["hour"]
    log = math.log
    for outcome in outcomes:
        error_class = outcome.error_class
        if not error_class.is_attempt:
            continue  # the caller's fault, or given up by it: no evidence about the endpoint
        at = outcome.timestamp
        if not 0 < at <= now:
            at = now
        key = (outcome.endpoint, int(at // fine_w), int(at // hour_w))
        tally = tallies.get(key)
        if tally is None:
            tally = tallies[key] = _Counts()
        if not outcome.success or error_class.counts_against_endpoint:
            tally.failures += 1
            continue
        tally.successes += 1
        ttft, tps = outcome.ttft_ms, outcome.tokens_per_second
        if ttft is not None and 0 <= ttft < math.inf:
            ttft_bin = floor(log(ttft) * _INV_LOG_BIN) if ttft > 0 else _ZERO_BIN
            hist = tally.ttft
            hist[ttft_bin] = hist.get(ttft_bin, 0) + 1
            tally.ttft_n += 1
        if tps is not None and 0 < tps < math.inf:
            tps_bin = floor(log(tps) * _INV_LOG_BIN)
            hist = tally.tps
            hist[tps_bin] = hist.get(tps_bin, 0) + 1
            tally.tps_n += 1


def _add_counts(into: dict[int, int], counts: dict[int, int]) -> None:
    for index, n in counts.items():
        into[index] = into.get(index, 0) + n


@dataclass(slots=True)
class _Bucket(_Counts):
    """A ring's bucket. The ingestion path queues its histogram bins here
    (``ttft_queued``, ``tps_queued``; ``ttft_n``/``tps_n`` already count them) and
    they are counted into ``ttft``/``tps`` in bulk (``settle``): before any read,
    whenever a queue reaches ``_QUEUED_MAX``, and when the ring's queueing moves
    on to another bucket.

    Why: counting a slice's few bins per endpoint into these histograms (dicts
    of a few hundred bins) cost ~1.9 µs per outcome in the loaded server, about
    four times what it costs in process: ranking runs between two slices and the
    dicts are out of the cache each time. Queued, a slice only extends two lists,
    and the count runs over hundreds of bins at once, in C. The histograms are
    counts, so when a bin is counted does not change them.
    """

    index: int = 0
    ttft_queued: list[int] = field(default_factory=list, compare=False, repr=False)
    tps_queued: list[int] = field(default_factory=list, compare=False, repr=False)

    def settle(self) -> _Bucket:
        """Count the queued bins into the histograms; returns the bucket."""
        if self.ttft_queued:
            _count_into(self.ttft, self.ttft_queued)
            self.ttft_queued = []
        if self.tps_queued:
            _count_into(self.tps, self.tps_queued)
            self.tps_queued = []
        return self


#: Queued bins a bucket holds at most (per metric) before they are counted:
#: ~0.1 s of one endpoint's outcomes at full ingestion, ~20 KB with the ints.
#: Only one bucket per ring holds any (``_Ring.queued_in``).
_QUEUED_MAX = 512


class _Ring:
    """``size`` buckets of ``width`` seconds; a slot is reused when its index moves on."""

    def __init__(self, name: str, width: float, size: int) -> None:
        self.name = name
        self.width = width
        self.size = size
        self.slots: list[_Bucket | None] = [None] * size
        #: The one bucket that may hold queued bins (the last one queued into):
        #: queueing into another settles it first, so a ring holds at most
        #: ``_QUEUED_MAX`` queued bins per metric.
        self.queued_in: _Bucket | None = None

    def get(self, index: int) -> _Bucket | None:
        """The bucket for ``index`` with its queued bins counted (for reading), else None."""
        b = self.slots[index % self.size]
        return b.settle() if b is not None and b.index == index else None

    def bucket(self, index: int) -> _Bucket:
        """The bucket for ``index``, a fresh one when its slot still holds an older one."""
        slot = index % self.size
        b = self.slots[slot]
        if b is None or b.index != index:
            b = self.slots[slot] = _Bucket(index=index)
        return b


@dataclass(slots=True)
class _EndpointSeries:
    rings: dict[str, _Ring]
    #: When the router first heard of the endpoint: earlier buckets have no data.
    first_seen: float
    #: (at, from_state, to_state), oldest first.
    transitions: deque[tuple[float, HealthState, HealthState]] = field(
        default_factory=lambda: deque(maxlen=TRANSITIONS_KEPT)
    )


def _new_series(now: float) -> _EndpointSeries:
    rings = {name: _Ring(name, w, n) for name, (w, n) in _RINGS.items()}
    return _EndpointSeries(rings, now)


class DashboardSeries:
    """Per-endpoint short-bucket counts, latency/throughput histograms and health history."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._endpoints: dict[EndpointKey, _EndpointSeries] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ writes

    def record_many(self, outcomes: Iterable[Outcome]) -> None:
        """Count validated outcomes (the router's validation has run: keys are known).

        On the outcome ingestion path, so written for speed: outcomes are first
        tallied per (endpoint, fine bucket, hour bucket), one log per metric
        each, and each tally then lands in each ring's bucket in one step. Per
        outcome that is a few dict bumps instead of a bucket lookup per ring
        (bench/bench_dashboard_series.py measures the cost).
        """
        with self._lock:
            now = self._clock()
            tallies: dict[tuple[EndpointKey, int, int], _Counts] = {}
            _tally(outcomes, now, tallies)
            self._land(tallies, now)

    def record_grouped(self, by_endpoint: Mapping[EndpointKey, list[Outcome]]) -> None:
        """``record_many`` of outcomes already grouped by endpoint (the ingestion
        path groups a batch once for the store and for this).

        Each endpoint's outcomes usually fall in one 10 s and one 60 s bucket
        (``started_at`` is recent), and then they make one tally in a few
        list passes and land in its two buckets, without a tally per outcome or
        per batch; otherwise they are tallied one by one as ``record_many``
        does. The buckets end up with the same counts and histograms: a
        bucket's counts are sums, whatever the order they were added in.
        """
        with self._lock:
            now = self._clock()
            (fine_w, _), (hour_w, _) = _RINGS["fine"], _RINGS["hour"]
            tallies: dict[tuple[EndpointKey, int, int], _Counts] = {}
            client_error, cancelled = NOT_ATTEMPTS
            inf, log, inv, zero = math.inf, math.log, _INV_LOG_BIN, _ZERO_BIN
            queued_max = _QUEUED_MAX
            endpoints = self._endpoints
            fine_horizon = int(now // fine_w) - _RINGS["fine"][1]
            hour_horizon = int(now // hour_w) - _RINGS["hour"][1]
            for endpoint, outcomes in by_endpoint.items():
                counted = [
                    o
                    for o in outcomes
                    if (c := o.error_class) is not client_error and c is not cancelled
                ]
                if not counted:
                    continue
                stamps = [o.timestamp for o in counted]
                lo, hi = min(stamps), max(stamps)
                if not (lo > 0 and hi <= now):
                    _tally(counted, now, tallies)
                    continue
                fine, hour = int(lo // fine_w), int(lo // hour_w)
                if fine != int(hi // fine_w) or hour != int(hi // hour_w):
                    _tally(counted, now, tallies)
                    continue
                good = [o for o in counted if o.success and o.error_class not in _AGAINST]
                ttft_bins = [
                    floor(log(v) * inv) if v > 0 else zero
                    for o in good
                    if (v := o.ttft_ms) is not None and 0 <= v < inf
                ]
                tps_bins = [
                    floor(log(v) * inv)
                    for o in good
                    if (v := o.tokens_per_second) is not None and 0 < v < inf
                ]
                # Straight into the endpoint's two buckets (``_land`` of one tally).
                series = endpoints.get(endpoint)
                if series is None:
                    series = endpoints[endpoint] = _new_series(now)
                rings = series.rings
                for ring, index, horizon in (
                    (rings["fine"], fine, fine_horizon),
                    (rings["hour"], hour, hour_horizon),
                ):
                    if index <= horizon:
                        continue  # older than the ring: nothing to show it in
                    b = ring.bucket(index)
                    b.failures += len(counted) - len(good)
                    b.successes += len(good)
                    # Queued, counted in bulk later (``_Bucket`` says why).
                    if b is not ring.queued_in:
                        if ring.queued_in is not None:
                            ring.queued_in.settle()
                        ring.queued_in = b
                    if ttft_bins:
                        b.ttft_queued += ttft_bins
                        b.ttft_n += len(ttft_bins)
                        if len(b.ttft_queued) >= queued_max:
                            b.settle()
                    if tps_bins:
                        b.tps_queued += tps_bins
                        b.tps_n += len(tps_bins)
                        if len(b.tps_queued) >= queued_max:
                            b.settle()
            self._land(tallies, now)

    def _land(self, tallies: dict[tuple[EndpointKey, int, int], _Counts], now: float) -> None:
        """Add each tally to its endpoint's fine and hour buckets (older than a ring: skipped)."""
        horizons = {name: int(now // w) - n for name, (w, n) in _RINGS.items()}
        endpoints = self._endpoints
        for (endpoint, fine_index, hour_index), tally in tallies.items():
            series = endpoints.get(endpoint)
            if series is None:
                series = endpoints[endpoint] = _new_series(now)
            for ring, index in (
                (series.rings["fine"], fine_index),
                (series.rings["hour"], hour_index),
            ):
                if index <= horizons[ring.name]:
                    continue  # older than the ring: nothing to show it in
                ring.bucket(index).add(tally)

    def on_transition(self, transition: Transition) -> None:
        """The health tracker's hook: remember when each endpoint changed state."""
        with self._lock:
            series = self._endpoints.get(transition.key)
            if series is None:
                series = self._endpoints[transition.key] = _new_series(transition.at)
            series.transitions.append((transition.at, transition.from_state, transition.to_state))

    def retain(self, keys: Iterable[EndpointKey]) -> None:
        """Catalog reload: forget endpoints that left the catalog."""
        keep = set(keys)
        with self._lock:
            for key in [k for k in self._endpoints if k not in keep]:
                del self._endpoints[key]

    # ------------------------------------------------------------------- reads

    async def points_of(
        self, wanted: Sequence[tuple[EndpointKey, HealthState]], range_name: str, min_samples: int
    ) -> list[Points]:
        return self.points_many(wanted, range_name, min_samples)

    def points_many(
        self, wanted: Sequence[tuple[EndpointKey, HealthState]], range_name: str, min_samples: int
    ) -> list[Points]:
        """``points_of``, synchronously (the sketch worker answers its requests with it)."""
        return [self.points(key, range_name, current, min_samples) for key, current in wanted]

    def points(
        self, key: EndpointKey, range_name: str, current: HealthState, min_samples: int
    ) -> Points:
        """The range's buckets for one endpoint, oldest first, as JSON-ready dicts.

        Percentiles are null in a bucket with fewer than ``min_samples``
        values, like every other figure of the metrics API.
        """
        spec = RANGES[range_name]
        with self._lock:
            now = self._clock()
            series = self._endpoints.get(key)
            last = math.floor(now / spec.width)
            out = []
            for index in range(last - spec.count + 1, last + 1):
                start = index * spec.width
                end = start + spec.width
                b = series.rings[spec.ring].get(index) if series is not None else None
                out.append(_point(b, start, end, series, current, min_samples))
            return out


def _point(
    b: _Bucket | None,
    start: float,
    end: float,
    series: _EndpointSeries | None,
    current: HealthState,
    min_samples: int,
) -> dict[str, Any]:
    enough_ttft = b is not None and b.ttft_n >= min_samples
    enough_tps = b is not None and b.tps_n >= min_samples

    def q(hist: dict[int, int], n: int, p: float, enough: bool) -> float | None:
        value = _quantile(hist, n, p) if enough else None
        return None if value is None else round(value, 3)

    attempts = b.attempts if b else 0
    if series is None or (end <= series.first_seen and attempts == 0):
        health = NO_DATA  # before the router heard of it: not "healthy", not "ejected"
    else:
        worst = _worst_state(series, start, end, current)
        health = NO_DATA if attempts == 0 and worst is HealthState.HEALTHY else worst.value
    return {
        "start": start,
        "end": end,
        "attempts": attempts,
        "successes": b.successes if b else 0,
        "failures": b.failures if b else 0,
        "uptime": rounded_ratio(b.successes, b.attempts) if b and b.attempts else None,
        "ttft_p50": q(b.ttft, b.ttft_n, 0.5, enough_ttft) if b else None,
        "ttft_p95": q(b.ttft, b.ttft_n, 0.95, enough_ttft) if b else None,
        "throughput_p50": q(b.tps, b.tps_n, 0.5, enough_tps) if b else None,
        "throughput_p95": q(b.tps, b.tps_n, 0.95, enough_tps) if b else None,
        "health": health,
    }


def _worst_state(
    series: _EndpointSeries | None, start: float, end: float, current: HealthState
) -> HealthState:
    """The worst state held at any moment of [start, end).

    The state at ``start`` is the target of the last transition before it,
    else the source of the first one after it, else the current state.
    """
    transitions = series.transitions if series is not None else ()
    at_start: HealthState | None = None
    worst: HealthState | None = None
    for at, from_state, to_state in transitions:
        if at < start:
            at_start = to_state
            continue
        if at_start is None:
            at_start = from_state
        if at >= end:
            break
        if worst is None or SEVERITY[to_state] > SEVERITY[worst]:
            worst = to_state
    base = at_start if at_start is not None else current
    if worst is None or SEVERITY[base] > SEVERITY[worst]:
        worst = base
    return worst
