"""The router's in-memory state and the operations both its APIs share.

gRPC and HTTP handlers are thin translations onto this object; it owns the
catalog (swapped atomically on reload), the stats store, the health tracker
and the random source, and ties them together: ranking reads a snapshot,
outcomes feed both the sketches and health. It does no I/O, so it is tested
without sockets; the clock and rng are injected.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from router_common.catalog_model import Catalog, Model, unknown_model_message
from router_common.domain import Clock, EndpointKey
from router_common.limits import MAX_REJECTIONS_REPORTED
from router_common.pb import router_pb2
from router_service.dashboard_series import DashboardSeries, SeriesSink
from router_service.health import HealthConfig, HealthTracker
from router_service.model import EndpointStats, HealthView, Outcome
from router_service.outcome_validation import Rejection, validate_outcome
from router_service.ranking import RankingConfig, RankingResult, RoutingRequest, rank
from router_service.sketches.store import InMemoryStatsStore, StatsStore

log = logging.getLogger(__name__)

#: Endpoints named in the "catalog loaded" line, each of added and removed (counts are whole).
_LOGGED_ENDPOINTS = 20


class UnknownModelError(LookupError):
    """The model is not in the catalog (NOT_FOUND on the wire)."""

    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(unknown_model_message(model))


class Replication(Protocol):
    """The seam to a store shared by router replicas (router_service.replication).

    The core stays pure and single-process by default; with replication on, it
    hands every accepted batch over and lets the replication layer decide
    when that batch reaches health (in the fleet-wide order, see
    router_service/replication/__init__.py). Both calls are synchronous and
    must not do I/O: they run on the request path.
    """

    def publish(self, outcomes: list[Outcome]) -> bool:
        """Queue accepted outcomes for peers; True: health gets them later, in fleet order."""
        ...

    def filter_probes(self, views: dict[EndpointKey, HealthView]) -> dict[EndpointKey, HealthView]:
        """Withhold half-open probes this replica holds no fleet-wide permit for."""
        ...

    def publish_batch_id(self, caller: str, sender: str, sequence: int) -> None:
        """Tell peers this replica has applied the whole batch with this id, so a
        resend that reaches one of them is acknowledged, not applied again."""
        ...


@dataclass(slots=True)
class IngestResult:
    """What happened to one batch of outcomes."""

    accepted: int = 0
    rejected: int = 0
    rejections: list[tuple[int, Rejection]] = field(default_factory=list)


class RouterCore:
    """Catalog + stats + health, and the rank/record operations over them."""

    def __init__(
        self,
        catalog: Catalog,
        catalog_version: str,
        clock: Clock,
        rng: random.Random | None = None,
        store: StatsStore | None = None,
        health_config: HealthConfig | None = None,
        ranking_config: RankingConfig | None = None,
        health_rng: random.Random | None = None,
        series: SeriesSink | None = None,
    ) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self.store: StatsStore = store or InMemoryStatsStore(clock=clock)
        #: The dashboard's 10 s / 1 min history (metrics_json reads it).
        self.series: SeriesSink = series or DashboardSeries(clock)
        self.health = HealthTracker(
            health_config or HealthConfig(),
            clock,
            health_rng or self.rng,
            on_transition=self.series.on_transition,
        )
        #: Set by the replication layer when router replicas share state.
        self.replication: Replication | None = None
        self.ranking_config = ranking_config or RankingConfig()
        self.catalog = catalog
        self.catalog_version = catalog_version
        self._known = catalog.endpoint_keys()
        #: Why the catalog file on disk was refused at the last reload (None: the
        #: file is the loaded catalog, or was loaded), for /metrics: the previous
        #: catalog keeps serving, so nothing else shows that an edit is not in effect.
        self.catalog_refused: str | None = None
        #: Outcomes by (error class) and rejected outcomes, for /metrics.
        self.outcomes_by_class: Counter[str] = Counter()
        self.outcomes_rejected = 0
        #: Rejected outcomes by the Outcome field the rejection names: a client
        #: whose clock is off shows as ``started_at``, a stale catalog as ``provider``.
        self.outcomes_rejected_by_field: Counter[str] = Counter()

    # -- catalog -------------------------------------------------------------

    def replace_catalog(self, catalog: Catalog, version: str) -> None:
        """Swap in a reloaded catalog; endpoints that still exist keep their metrics.

        The log line names the endpoints added and removed (the first
        ``_LOGGED_ENDPOINTS`` of each, with counts): a removed endpoint's sketches,
        health and dashboard history are dropped here, and re-adding it later
        starts it from nothing, so an operator reverting an edit can see what
        the edit cost."""
        before = self._known
        self.catalog = catalog
        self.catalog_version = version
        self._known = catalog.endpoint_keys()
        self.store.retain(self._known)
        self.health.retain(self._known)
        self.series.retain(self._known)
        added = sorted(str(k) for k in self._known - before)
        removed = sorted(str(k) for k in before - self._known)
        log.info(
            "catalog loaded",
            extra={
                "catalog_version": version,
                "models": len(catalog.models),
                "endpoints": len(self._known),
                "endpoints_added": len(added),
                "endpoints_removed": len(removed),
                "added": added[:_LOGGED_ENDPOINTS],
                "removed": removed[:_LOGGED_ENDPOINTS],
            },
        )

    def model(self, model_id: str) -> Model:
        """The catalog entry for a model, or UnknownModelError."""
        found = self.catalog.models.get(model_id)
        if found is None:
            raise UnknownModelError(model_id)
        return found

    # -- ranking -------------------------------------------------------------

    def rank(self, request: RoutingRequest) -> RankingResult:
        """Rank a model's endpoints. Raises UnknownModelError or RankingInputError.

        The model is looked up before rank() validates the rest, so an unknown
        model is NOT_FOUND even when its preferences are also odd.
        """
        model = self.model(request.model)
        keys = [e.key for e in model.endpoints]
        result = rank(
            request,
            model,
            self.store.snapshot(keys),
            self._health_views(keys),
            self.clock(),
            self.rng,
            self.ranking_config,
        )
        for key in result.probing:
            self.health.grant_probe(key)
        return result

    def _health_views(self, keys: list[EndpointKey]) -> dict[EndpointKey, HealthView]:
        views = self.health.views(keys)
        if self.replication is not None:
            views = self.replication.filter_probes(views)
        return views

    # -- outcomes ------------------------------------------------------------

    def record(self, messages: Iterable[router_pb2.Outcome], first_index: int = 0) -> IngestResult:
        """Validate and store outcomes; junk is rejected item by item and stores nothing."""
        result = IngestResult()
        now = self.clock()
        accepted = []
        for offset, msg in enumerate(messages):
            checked = validate_outcome(msg, self._known, now)
            if isinstance(checked, Rejection):
                result.rejected += 1
                self.outcomes_rejected_by_field[checked.field] += 1
                if len(result.rejections) < MAX_REJECTIONS_REPORTED:
                    result.rejections.append((first_index + offset, checked))
                continue
            accepted.append(checked)
        # Baselines are read before this batch lands, so a slowdown does not
        # pull its own yardstick up (the cache refreshes later anyway).
        stats = self.store.stats
        baselines = {k: stats(k).ttft_1h.get(0.5) for k in {o.endpoint for o in accepted}}
        self.store.record_many(accepted)
        self.series.record_many(accepted)
        deferred = (
            bool(accepted) and self.replication is not None and self.replication.publish(accepted)
        )
        if not deferred:
            self.health.record_many(accepted, baselines)
        by_class = self.outcomes_by_class
        for error_class, count in Counter(o.error_class for o in accepted).items():
            by_class[error_class.value] += count
        result.accepted = len(accepted)
        self.outcomes_rejected += result.rejected
        return result

    def apply_replicated(self, outcomes: Iterable[Outcome], *, sketches: bool, health: bool) -> int:
        """Apply outcomes another replica accepted (or this one's, back from the stream).

        They were validated where they were accepted; endpoints this replica's
        catalog does not know (a reload not seen here yet) are skipped.
        Returns how many were applied.
        """
        known = self._known
        batch = [o for o in outcomes if o.endpoint in known]
        if sketches:
            self.store.record_many(batch)
            self.series.record_many(batch)
        if health:
            for outcome in batch:
                baseline = self.store.stats(outcome.endpoint).ttft_1h.get(0.5)
                self.health.record(outcome, baseline)
        return len(batch)

    @property
    def known_endpoints(self) -> frozenset[EndpointKey]:
        return self._known

    def refresh(self) -> None:
        """Recompute cached quantiles (coalesced: called per batch and on a timer)."""
        self.store.refresh(self.clock())

    def refresh_steps(self) -> Iterator[None]:
        """``refresh`` one endpoint per step, so the serving loop can run between steps."""
        return self.store.refresh_steps(self.clock())

    # -- reads -----------------------------------------------------------------

    def endpoint_stats(self, key: EndpointKey) -> EndpointStats:
        return self.store.stats(key)

    def health_view(self, key: EndpointKey) -> HealthView:
        return self.health.view(key)
