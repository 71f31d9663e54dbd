"""/metrics series of replica sharing (registered only when --redis is set).

==========================================  =======  =============================================
metric                                      type     meaning
==========================================  =======  =============================================
router_redis_connected                      gauge    1 while the last Redis call succeeded
router_redis_state_loaded                   gauge    1 once the shared state was loaded at start
router_redis_replication_lag_seconds        gauge    quantile=0.5|0.99 of the last 2,048 peer
                                                     entries: Redis XADD time to applied here
router_redis_errors_total                   counter  failed Redis calls (timeouts included)
router_redis_buffered_outcomes              gauge    accepted here, not yet published
router_redis_dropped_outcomes_total         counter  pushed out of the full buffer (peers never
                                                     see them; this replica kept them)
router_redis_published_outcomes_total       counter  outcomes this replica published
router_redis_applied_outcomes_total         counter  peers' outcomes applied here
router_redis_bad_entries_total              counter  stream entries/checkpoints not understood
router_redis_duplicate_entries_total        counter  peer batches seen twice and skipped
router_redis_batch_ids_published_total      counter  ids of batches applied here, published so
                                                     peers acknowledge a resend as a duplicate
router_redis_batch_ids_learned_total        counter  batch ids peers applied, remembered here
router_redis_dropped_batch_ids_total        counter  batch ids pushed out of the full buffer
                                                     (peers would apply a resend of those)
router_redis_checkpoints_written_total      counter  checkpoints this replica wrote (lease holder)
router_redis_probe_permits_held             gauge    fleet-wide half-open permits held here
==========================================  =======  =============================================
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from router_service.replication.replicator import RedisReplicator


class ReplicationCollector(Collector):
    def __init__(self, replicator: RedisReplicator) -> None:
        self._r = replicator

    def collect(self) -> Iterator:
        r, s = self._r, self._r.stats
        yield GaugeMetricFamily(
            "router_redis_connected", "1 while Redis answers", value=float(r.connected)
        )
        yield GaugeMetricFamily(
            "router_redis_state_loaded",
            "1 once the shared state was loaded from Redis",
            value=float(r.restored),
        )
        lag = GaugeMetricFamily(
            "router_redis_replication_lag_seconds",
            "Peer outcomes: seconds from XADD to applied here (recent entries)",
            labels=["quantile"],
        )
        if r.lags:
            values = np.quantile(np.fromiter(r.lags, dtype=float), [0.5, 0.99])
            lag.add_metric(["0.5"], float(values[0]))
            lag.add_metric(["0.99"], float(values[1]))
        yield lag
        yield CounterMetricFamily("router_redis_errors", "Failed Redis calls", value=s.errors)
        yield GaugeMetricFamily(
            "router_redis_buffered_outcomes",
            "Outcomes accepted here and not yet published",
            value=r.buffered,
        )
        yield CounterMetricFamily(
            "router_redis_dropped_outcomes",
            "Outcomes dropped from the full publish buffer",
            value=s.dropped,
        )
        yield CounterMetricFamily(
            "router_redis_published_outcomes", "Outcomes published", value=s.published
        )
        yield CounterMetricFamily(
            "router_redis_applied_outcomes", "Peers' outcomes applied here", value=s.applied
        )
        yield CounterMetricFamily(
            "router_redis_bad_entries", "Unreadable stream entries", value=s.bad_entries
        )
        yield CounterMetricFamily(
            "router_redis_duplicate_entries",
            "Peer batches seen twice and skipped",
            value=s.duplicates,
        )
        yield CounterMetricFamily(
            "router_redis_batch_ids_published",
            "Ids of batches applied here, published for peers",
            value=s.batch_ids_published,
        )
        yield CounterMetricFamily(
            "router_redis_batch_ids_learned",
            "Ids of batches peers applied, remembered here",
            value=s.batch_ids_learned,
        )
        yield CounterMetricFamily(
            "router_redis_dropped_batch_ids",
            "Batch ids dropped from the full publish buffer",
            value=s.batch_ids_dropped,
        )
        yield CounterMetricFamily(
            "router_redis_checkpoints_written",
            "Checkpoints written by this replica",
            value=s.checkpoints_written,
        )
        yield GaugeMetricFamily(
            "router_redis_probe_permits_held",
            "Fleet-wide probe permits held by this replica",
            value=len(r.probe_permits_held),
        )
