"""Latency and throughput sketches: a merging t-digest, rolling windows, and the stats store.

``TDigest`` summarises a stream of values in a few KB; ``EndpointWindows`` keeps
rings of time buckets of them per endpoint; ``StatsStore`` is the seam the rest
of the router talks to (``InMemoryStatsStore`` now, a shared store later).
"""

from router_service.sketches.store import InMemoryStatsStore, StatsStore
from router_service.sketches.tdigest import TDigest
from router_service.sketches.windows import BucketExport, EndpointWindows, SeriesPoint

__all__ = [
    "BucketExport",
    "EndpointWindows",
    "InMemoryStatsStore",
    "SeriesPoint",
    "StatsStore",
    "TDigest",
]
