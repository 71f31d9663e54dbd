"""The router's domain vocabulary: outcomes, the read-only stats views, health views.

Every domain module (sketches, health, ranking) speaks in these types so that
they can be tested without sockets and wired together by the server at the
edge. The words the sidecar shares (EndpointKey, ErrorClass, Clock) are in
``router_common.domain``. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from router_common.domain import EndpointKey, ErrorClass

#: Percentiles the router keeps cached for ranking, as quantiles in (0, 1).
RANKING_QUANTILES: tuple[float, ...] = (0.5, 0.75, 0.9, 0.95, 0.99)


class Outcome(NamedTuple):
    """The validated result of one upstream attempt.

    ``ttft_ms`` and ``tokens_per_second`` are None when the attempt did not get
    that far (a connection error has no TTFT).

    A NamedTuple, like EndpointKey, because one is built per ingested outcome
    (tens of thousands a second on the serving loop): a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__`` and cost
    2.2 µs, a fifth of applying an outcome; a NamedTuple is built in ~0.4 µs,
    and is just as immutable.
    """

    endpoint: EndpointKey
    timestamp: float
    success: bool
    error_class: ErrorClass = ErrorClass.NONE
    http_status: int = 0
    ttft_ms: float | None = None
    tokens_per_second: float | None = None
    output_tokens: int = 0
    duration_ms: float = 0.0
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class MetricSummary:
    """Cached quantiles of one metric over one window.

    ``quantiles`` maps each of RANKING_QUANTILES to a value; it is empty when
    ``count`` is 0, so "no data" can never leak a NaN into a ranking.
    """

    count: int = 0
    quantiles: Mapping[float, float] = field(default_factory=dict)

    def get(self, q: float) -> float | None:
        """The q-quantile, or None when there is no data."""
        if self.count == 0:
            return None
        return self.quantiles.get(q)


@dataclass(frozen=True, slots=True)
class Uptime:
    """Attempt counters over a window; successes + failures == attempts."""

    attempts: int = 0
    successes: int = 0
    failures: int = 0

    @property
    def ratio(self) -> float | None:
        """Success ratio, or None with no attempts (unknown is not 100%)."""
        if self.attempts == 0:
            return None
        return self.successes / self.attempts


#: Decimal places of a ratio in the JSON API: six tell 99.9999 % from 100 %.
RATIO_DIGITS = 6


def rounded_ratio(successes: int, attempts: int) -> float:
    """``successes / attempts`` rounded for the JSON API, reaching 1.0 or 0.0 only when exact.

    Why: rounded to 4 digits, one failure in 20,000 attempts (0.99995) read 1.0, so the
    API and the dashboard claimed a clean window that /metrics (unrounded) did not.
    """
    shown = round(successes / attempts, RATIO_DIGITS)
    if shown == 1.0 and successes < attempts:
        return round(1.0 - 10**-RATIO_DIGITS, RATIO_DIGITS)
    if shown == 0.0 and successes > 0:
        return 10.0**-RATIO_DIGITS
    return shown


class RecentEstimate(NamedTuple):
    """The recent view of one endpoint, as ranking reads it.

    ``ttft_ms`` is None until a successful TTFT was seen; ``ttft_at`` is when
    it was last updated (the caller's clock). ``failure_ratio`` is the decayed
    share of failed attempts (0 with no attempts); ``samples`` counts TTFT
    updates since the tracker was made (for "is this estimate more than one sample?");
    ``lone`` says the estimate is one answer that replaced an older estimate after
    a silence, with none since (ranking leads with it but does not share traffic on it).
    """

    ttft_ms: float | None = None
    ttft_at: float | None = None
    failure_ratio: float = 0.0
    attempt_at: float | None = None
    samples: int = 0
    lone: bool = False


EMPTY_RECENT = RecentEstimate()


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """Everything ranking and the metrics API read about one endpoint, precomputed."""

    ttft_5m: MetricSummary = MetricSummary()
    ttft_1h: MetricSummary = MetricSummary()
    ttft_1d: MetricSummary = MetricSummary()
    tps_5m: MetricSummary = MetricSummary()
    tps_1h: MetricSummary = MetricSummary()
    tps_1d: MetricSummary = MetricSummary()
    uptime_15m: Uptime = Uptime()
    uptime_1h: Uptime = Uptime()
    uptime_1d: Uptime = Uptime()
    last_sample_at: float | None = None
    #: The decayed recent view (router_service.sketches.recent), beside the windows.
    recent: RecentEstimate = EMPTY_RECENT


EMPTY_STATS = EndpointStats()


class HealthState(enum.StrEnum):
    """Per-endpoint health, driven by outcomes (see router_service.health)."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    EJECTED = "ejected"
    PROBING = "probing"


class HealthView(NamedTuple):
    """A point-in-time view of one endpoint's health, as ranking consumes it.

    ``probe_available`` only matters in PROBING: whether the half-open state
    has a free probe slot right now (if not, the endpoint is treated as ejected).
    A NamedTuple: every ranking builds one per endpoint, and a frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__``.
    """

    state: HealthState = HealthState.HEALTHY
    reason: str = ""
    since: float = 0.0
    ejected_until: float | None = None
    last_failure_at: float | None = None
    consecutive_failures: int = 0
    probe_available: bool = False


HEALTHY = HealthView()
