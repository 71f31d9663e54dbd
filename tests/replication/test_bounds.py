"""Nothing grows without limit: Redis keys expire and are trimmed, the buffer drops (counted)."""

from __future__ import annotations

import pytest

from router_service.replication.config import ReplicationConfig
from tests.conftest import loopback_router, wait_for
from tests.replication.fleet import outcome

pytestmark = pytest.mark.timeout(60)


async def test_every_key_is_namespaced_bounded_and_expiring(tmp_path, redis_server) -> None:
    cfg = ReplicationConfig(
        url=redis_server.url, prefix="bounded", stream_max_entries=100, checkpoint_interval_s=0.1
    )
    app = loopback_router(tmp_path, replication=cfg, watch_catalog=False)
    await app.start()
    try:
        for _ in range(1000):
            app.core.record([outcome("cerebras")])
        client = redis_server.client()
        await wait_for(lambda: app.replicator.buffered == 0)
        await wait_for(lambda: app.replicator.stats.checkpoints_written >= 2)
        keys = sorted(k.decode() for k in client.keys("*"))
        assert keys == ["bounded:checkpoint", "bounded:checkpoint:lease", "bounded:outcomes"]
        for key in keys:
            assert client.pttl(key) > 0, key  # every key expires without a writer
        # Approximate MAXLEN trims whole stream nodes (100 entries each by default).
        assert client.xlen("bounded:outcomes") <= 2 * cfg.stream_max_entries
    finally:
        await app.stop()


async def test_redis_down_buffer_is_bounded_and_drops_are_counted(tmp_path, redis_server) -> None:
    cfg = ReplicationConfig(url=redis_server.url, buffer_max_outcomes=100)
    app = loopback_router(tmp_path, replication=cfg, watch_catalog=False)
    await app.start()
    try:
        redis_server.kill()
        app.core.record([outcome("cerebras")])
        await wait_for(lambda: not app.replicator.connected)
        for _ in range(30):
            result = app.core.record([outcome("cerebras")] * 10)
            assert result.accepted == 10  # accepted while Redis is down
        assert app.replicator.buffered == 100
        assert app.replicator.stats.dropped == 301 - 100
        app.refresh_now()
        assert app.core.endpoint_stats(outcome_key()).uptime_1h.attempts == 301
    finally:
        await app.stop()


def outcome_key():
    from router_common.domain import EndpointKey

    return EndpointKey("zai/glm-4.7", "cerebras")


async def test_redis_unreachable_at_start_serves_then_joins_when_it_appears(tmp_path) -> None:
    from grpc_health.v1 import health_pb2

    from tests.replication.fleet import RedisServer

    server = RedisServer(tmp_path / "late-redis")  # port chosen, not started yet
    cfg = ReplicationConfig(url=server.url, startup_timeout_s=0.3, backoff_max_s=0.2)
    app = loopback_router(tmp_path, replication=cfg, watch_catalog=False)
    await app.start()
    try:
        assert not app.replicator.restored
        status = await app._health.Check(health_pb2.HealthCheckRequest(service=""), None)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        assert app.core.record([outcome("cerebras")]).accepted == 1
        server.start()
        await wait_for(lambda: app.replicator.restored and app.replicator.buffered == 0)
        assert server.client().xlen("llm-router:outcomes") == 1  # the early outcome, published
    finally:
        await app.stop()
        server.kill()
