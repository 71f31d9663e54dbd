"""Prometheus metrics of one sidecar, on its own registry.

A per-app CollectorRegistry (not the global one) lets tests and benchmarks
run several sidecars in one process without name clashes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

#: Added latency is sub-millisecond when healthy; fallbacks push it to seconds.
_ADDED_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: ``result`` values of ``router_sidecar_hedges_total`` (sidecar/hedging.py).
HEDGE_RESULTS = ("won", "lost", "both_failed")
#: ``result`` values of ``router_sidecar_exploration_races_total``.
RACE_RESULTS = ("explored_won", "leader_won", "both_failed")


class SidecarMetrics:
    """Every metric the sidecar exports. Label values are bounded: provider names come
    from the catalog, error classes and HTTP statuses from fixed sets."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "router_sidecar_requests_total",
            "Chat completion requests answered, by HTTP status returned to the app.",
            ["status"],
            registry=r,
        )
        self.attempts = Counter(
            "router_sidecar_attempts_total",
            "Upstream attempts, by provider and error class (none = success).",
            ["provider", "error_class"],
            registry=r,
        )
        self.fallbacks = Counter(
            "router_sidecar_fallbacks_total",
            "Times a request moved on to the next provider after a retriable failure.",
            registry=r,
        )
        self.hedges = Counter(
            "router_sidecar_hedges_total",
            "Hedged streaming attempts started, by result: won (the backup answered first), "
            "lost (the first did), both_failed.",
            ["result"],
            registry=r,
        )
        self.hedge_cancelled_cost = Counter(
            "router_sidecar_hedge_cancelled_cost_usd_total",
            "Estimated cost (input tokens x price) of attempts cancelled by hedging, USD.",
            registry=r,
        )
        self.exploration_races = Counter(
            "router_sidecar_exploration_races_total",
            "Exploration picks raced against the leader (sort ttft, --race-explorations), by "
            "result: explored_won, leader_won, both_failed.",
            ["result"],
            registry=r,
        )
        self.exploration_race_cost = Counter(
            "router_sidecar_exploration_race_cost_usd_total",
            "Estimated cost (input tokens x price) of race losers closed after their first "
            "token, USD.",
            registry=r,
        )
        # Every result at 0 from the start: an alert on ``rate(...{result="won"}[5m])``
        # or a dashboard's panel has a series to read before the first hedge or race,
        # rather than "no data" (which reads like a broken scrape).
        for result in HEDGE_RESULTS:
            self.hedges.labels(result)
        for result in RACE_RESULTS:
            self.exploration_races.labels(result)
        self.spend = Counter(
            "router_sidecar_spend_usd",
            "What answered tokens cost at the catalog's prices, USD, by catalog model and "
            "provider (attempts that failed after producing tokens included).",
            ["model", "provider"],
            registry=r,
        )
        self._spend_by: dict[tuple[str, str], Counter] = {}
        self.added_latency = Histogram(
            "router_sidecar_added_latency_seconds",
            "Sidecar overhead: TTFT seen by the app minus the upstream TTFT (streams).",
            buckets=_ADDED_BUCKETS,
            registry=r,
        )
        self.upstream_ttft = Histogram(
            "router_sidecar_upstream_ttft_seconds",
            "Upstream time to first content token, by provider.",
            ["provider"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.ranking_source = Counter(
            "router_sidecar_ranking_source_total",
            "Where rankings came from: router, cache, stale (router down) or catalog.",
            ["source"],
            registry=r,
        )
        #: Bound once: ``labels()`` takes a lock and a dict lookup, and this
        #: counter is bumped on every request's path.
        self._ranking_source_by = {
            src: self.ranking_source.labels(src) for src in ("router", "cache", "stale", "catalog")
        }
        #: Labelled children bound on first use (same reason as above).
        self._requests_by: dict[int, Any] = {}
        self._attempts_by: dict[tuple[str, str], Any] = {}
        self._ttft_by: dict[str, Any] = {}
        self.outcome_queue_depth = Gauge(
            "router_sidecar_outcome_queue_depth",
            "Outcomes the router has not acknowledged yet: queued, or sent and to be resent.",
            registry=r,
        )
        self.outcomes_dropped = Counter(
            "router_sidecar_outcomes_dropped_total",
            "Outcomes dropped because the bounded queue was full.",
            registry=r,
        )
        self.outcomes_sent = Counter(
            "router_sidecar_outcomes_sent_total",
            "Outcomes acknowledged by the router.",
            registry=r,
        )
        self.outcomes_rejected = Counter(
            "router_sidecar_outcomes_rejected_total",
            "Outcomes the router acknowledged as rejected (stored nothing); the log line "
            "'router rejected outcomes' names the first reason.",
            registry=r,
        )
        self.router_clock_offset = Gauge(
            "router_sidecar_router_clock_offset_seconds",
            "The router's wall clock minus this host's, measured from the last fresh "
            "ranking (outcome start times are sent on the router's clock).",
            registry=r,
        )
        self.outcome_send_failures = Counter(
            "router_sidecar_outcome_send_failures_total",
            "StreamOutcomes calls that failed (router unreachable or erroring).",
            registry=r,
        )
        self.providers_without_key = Gauge(
            "router_sidecar_providers_without_key",
            "Providers known here whose API key variable is unset (never tried from this pod).",
            registry=r,
        )
        self.router_up = Gauge(
            "router_sidecar_router_up",
            "1 when the last call to the router succeeded, else 0.",
            registry=r,
        )

    def count_spend(self, model: str, provider: str, usd: float) -> None:
        """Add to ``router_sidecar_spend_usd_total``; each labelled child is looked up once.

        ``labels()`` takes a lock and builds a key on every call; the children are
        kept here instead (as many as the catalog's (model, provider) pairs, as the
        label values only ever come from rankings).
        """
        child = self._spend_by.get((model, provider))
        if child is None:
            child = self._spend_by[(model, provider)] = self.spend.labels(model, provider)
        child.inc(usd)

    def count_request(self, status: int) -> None:
        """``requests`` by status, the labelled child bound once per status seen."""
        child = self._requests_by.get(status)
        if child is None:
            child = self.requests.labels(str(status))
            if len(self._requests_by) < 64:  # statuses are a small set; bounded anyway
                self._requests_by[status] = child
        child.inc()

    def count_attempt(self, provider: str, error_class: str) -> None:
        """``attempts`` by provider and class (providers come from the catalog)."""
        key = (provider, error_class)
        child = self._attempts_by.get(key)
        if child is None:
            child = self.attempts.labels(provider, error_class)
            if len(self._attempts_by) < 4096:
                self._attempts_by[key] = child
        child.inc()

    def observe_upstream_ttft(self, provider: str, seconds: float) -> None:
        child = self._ttft_by.get(provider)
        if child is None:
            child = self.upstream_ttft.labels(provider)
            if len(self._ttft_by) < 1024:
                self._ttft_by[provider] = child
        child.observe(seconds)

    def count_ranking_source(self, source: str) -> None:
        self._ranking_source_by[source].inc()

    def render(self) -> bytes:
        return generate_latest(_WithoutCreated(self.registry))


class _WithoutCreated:
    """The registry's families without prometheus_client's ``*_created`` samples.

    Why: the text format carries them as gauges of their own, one per labelled child
    of every counter and histogram (``router_sidecar_attempts_created{provider,
    error_class}``, …): a second series per series, holding only the second the
    child was first used, which no alert or panel reads. Filtered here rather than
    with ``disable_created_metrics()``, which would change every registry of a
    process that embeds the sidecar.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            kept = Metric(family.name, family.documentation, family.type, family.unit)
            kept.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield kept
