"""A full Redis (``maxmemory``, ``noeviction``) is one outage, logged once, not a flap.

Found by a black-box fault audit: Redis refusing every write (XADD, SET: "command
not allowed when used memory > 'maxmemory'") still answers XREAD, and each read
was taken for the end of the outage: every replica logged ``redis connection
lost`` and ``redis connection restored`` about once a second, and
``router_redis_connected`` flapped, for as long as Redis stayed full. Now only a
write accepted again ends it. A real router, a real redis-server.
"""

from __future__ import annotations

import pytest

from router_service.replication.config import ReplicationConfig
from tests.conftest import loopback_router, wait_for
from tests.replication.fleet import outcome

pytestmark = pytest.mark.timeout(60)

LOST = "redis connection lost: serving from local state, buffering outcomes"
RESTORED = "redis connection restored"


async def test_a_full_redis_is_one_outage_until_writes_are_accepted_again(
    tmp_path, redis_server, caplog
) -> None:
    config = ReplicationConfig(
        url=redis_server.url,
        checkpoint_interval_s=0.1,
        read_block_s=0.05,  # reads answered often: each one used to end the "outage"
        startup_timeout_s=5.0,
    )
    app = loopback_router(tmp_path, replication=config, watch_catalog=False)
    await app.start()
    try:
        replicator = app.replicator
        assert replicator.restored and replicator.connected
        client = redis_server.client()
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)  # full: every write refused, reads answered

        def refused_a_while() -> bool:
            app.core.record([outcome("cerebras")])
            return replicator.stats.errors >= 20

        await wait_for(refused_a_while, timeout=20, interval=0.05)
        messages = [r.getMessage() for r in caplog.records]
        assert messages.count(LOST) == 1, messages.count(LOST)
        assert messages.count(RESTORED) == 0
        assert not replicator.connected and replicator.buffered > 0

        client.config_set("maxmemory", 0)  # room again
        await wait_for(lambda: replicator.connected and replicator.buffered == 0, timeout=20)
        messages = [r.getMessage() for r in caplog.records]
        assert (messages.count(LOST), messages.count(RESTORED)) == (1, 1)
    finally:
        await app.stop()
