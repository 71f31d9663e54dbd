"""A replica whose clock is off from Redis's: the stream's retention and the lag stay right.

Stream ids carry Redis's clock; the checkpoint writer trimmed the stream with
``XTRIM MINID <its own now - 2 min>`` and every replica measured its lag as
its own now minus the id's time. A writer whose clock ran 10 minutes ahead
(a node without NTP) trimmed every entry at each checkpoint, so a peer back
from a short Redis outage, or a replica replaying after the checkpoint,
lost what the README says the stream keeps for 2 minutes; and its
``router_redis_replication_lag_seconds`` read 600 s. Both now use Redis's
clock (TIME), as the stream ids do. Two in-process routers, real redis-server.
"""

from __future__ import annotations

import time

import pytest

from router_service.replication.config import ReplicationConfig
from tests.conftest import loopback_router, wait_for
from tests.replication.fleet import outcome

pytestmark = pytest.mark.timeout(60)

SKEW_S = 600.0


async def test_a_writer_clock_ahead_of_redis_keeps_the_retention(tmp_path, redis_server) -> None:
    client = redis_server.client()
    # Approximate trimming drops whole stream nodes; small nodes make it visible
    # with tens of entries instead of thousands.
    client.config_set("stream-node-max-entries", 5)
    config = ReplicationConfig(url=redis_server.url, prefix="skew", checkpoint_interval_s=0.1)
    (tmp_path / "ahead").mkdir()
    (tmp_path / "true").mkdir()
    ahead = loopback_router(
        tmp_path / "ahead",
        clock=lambda: time.time() + SKEW_S,
        replication=config,
        watch_catalog=False,
    )
    true = loopback_router(tmp_path / "true", replication=config, watch_catalog=False)
    await ahead.start()
    try:
        # The skewed replica takes the checkpoint lease first, so it is the one that trims.
        await wait_for(lambda: ahead.replicator.stats.checkpoints_written >= 1)
        await true.start()
        try:
            for _ in range(40):
                true.core.record([outcome("cerebras")])
            await wait_for(lambda: true.replicator.buffered == 0)
            await wait_for(lambda: ahead.replicator.stats.applied >= 40)
            # Only the lease holder writes (and trims): two more by the skewed one.
            written = ahead.replicator.stats.checkpoints_written
            await wait_for(lambda: ahead.replicator.stats.checkpoints_written >= written + 2)
            # Every entry is seconds old: inside the 2 minutes the stream keeps.
            assert client.xlen("skew:outcomes") == 40
            assert max(ahead.replicator.lags) < 5.0  # was ~600 s
        finally:
            await true.stop()
    finally:
        await ahead.stop()
