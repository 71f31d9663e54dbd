"""Exactly-once outcome batches across replicas sharing one real Redis.

The gap an audit reproduced: a sidecar whose acknowledgement was lost resends
the batch, a Service sends the resend to another replica, and that replica,
which remembered only the ids it was sent, applied it again: the fleet counted
the batch twice. Now a replica publishes a batch's id once it has applied the
whole batch, and its peers remember it, so the resend is acknowledged there as
a duplicate. Two in-process routers on loopback, real gRPC, real redis-server.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import orjson
import pytest

from router_common.catalog import load_catalog
from router_common.domain import EndpointKey
from router_common.limits import BATCH_IDS_REMEMBERED, MAX_SENDERS_PER_CALLER, MAX_TRACKED_CALLERS
from router_common.pb import router_pb2, router_pb2_grpc
from router_service.app import RouterApp
from router_service.callers import CallerLimitsConfig
from router_service.core import RouterCore
from router_service.replication.codec import decode_outcomes
from router_service.replication.config import ReplicationConfig
from router_service.replication.replicator import RedisReplicator
from router_service.security import SecuritySettings
from tests.conftest import EXAMPLE_CATALOG, FakeClock, loopback_router, wait_for
from tests.replication.fleet import MODEL, RedisServer, outcome

pytestmark = pytest.mark.timeout(60)

CEREBRAS = EndpointKey(MODEL, "cerebras")
STREAM = "once:outcomes"


def request(n: int, sender: str, sequence: int) -> router_pb2.RecordOutcomeRequest:
    message = router_pb2.RecordOutcomeRequest(outcomes=[outcome("cerebras")] * n)
    message.batch_id.sender, message.batch_id.sequence = sender, sequence
    return message


async def record(app: RouterApp, message: router_pb2.RecordOutcomeRequest):
    async with grpc.aio.insecure_channel(app.grpc_address) as channel:
        return await router_pb2_grpc.RouterStub(channel).RecordOutcome(message, timeout=10)


def attempts(app: RouterApp) -> int:
    assert app.core is not None
    app.refresh_now()
    return app.core.endpoint_stats(CEREBRAS).uptime_1h.attempts


async def start(
    tmp_path: Path, name: str, redis: RedisServer, replication: dict | None = None, **settings
) -> RouterApp:
    workdir = tmp_path / name
    workdir.mkdir()
    config = ReplicationConfig(url=redis.url, prefix="once", **(replication or {}))
    app = loopback_router(workdir, replication=config, watch_catalog=False, **settings)
    await app.start()
    return app


@pytest.fixture
async def pair(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[list[RouterApp]]:
    """Replicas A and B on one Redis; A's callers get almost no outcome budget
    (one full batch, then 0.001/s), so a test can make A refuse a batch."""
    tight = SecuritySettings(
        caller_limits=CallerLimitsConfig(outcomes_per_second=0.001, outcome_burst=1000)
    )
    apps = [await start(tmp_path, "a", redis_server, security=tight)]
    try:
        apps.append(await start(tmp_path, "b", redis_server))
        yield apps
    finally:
        for app in apps:
            await app.stop()


async def test_a_resend_to_a_peer_is_acknowledged_as_a_duplicate(pair, redis_server) -> None:
    a, b = pair
    assert a.replicator is not None and b.replicator is not None
    first = await record(a, request(5, "sidecar-1/7/x", 1))
    assert (first.accepted, first.duplicate_batches) == (5, 0)
    # B learns the id from the stream (after the outcomes, which come first).
    await wait_for(lambda: b.servicer.ledger.knows("127.0.0.1", "sidecar-1/7/x", 1))
    assert b.replicator.stats.batch_ids_learned == 1
    assert b.replicator.stats.applied == 5
    assert "router_redis_batch_ids_learned_total 1.0" in await metrics_of(b)
    assert "router_redis_batch_ids_published_total 1.0" in await metrics_of(a)

    again = await record(b, request(5, "sidecar-1/7/x", 1))  # the ack was lost; B gets the resend
    assert (again.accepted, again.duplicate_batches) == (0, 1)
    assert list(again.applied_sequences) == [1]

    # B applied and published nothing of it: the stream holds A's entries only,
    # the id in the last one, at or after every outcome of the batch.
    assert b.replicator.buffered == 0 and b.replicator.stats.published == 0
    entries = [fields for _, fields in redis_server.client().xrange(STREAM)]
    assert {fields[b"r"].decode() for fields in entries} == {a.replicator.replica_id}
    # Every entry is an outcome entry as a reader that ignores "b" sees it.
    counts = [len(decode_outcomes(fields[b"o"])) for fields in entries]
    assert sum(counts) == 5
    with_ids = [i for i, fields in enumerate(entries) if b"b" in fields]
    assert with_ids == [len(entries) - 1]
    assert orjson.loads(entries[-1][b"b"]) == [["127.0.0.1", "sidecar-1/7/x", 1]]
    # The fleet counts the batch once, on both replicas.
    assert attempts(a) == 5 and attempts(b) == 5
    assert b.servicer.ledger.accepted["127.0.0.1"] == 0
    assert b.servicer.ledger.duplicates["127.0.0.1"] == 1
    assert a.replicator.stats.applied == 0  # A got nothing back from B
    assert a.replicator.stats.batch_ids_learned == 0  # nor learned from its own entries


async def test_a_batch_a_replica_refused_stays_new_at_its_peer(pair) -> None:
    a, b = pair
    assert a.replicator is not None and b.replicator is not None
    assert (await record(a, request(1000, "sidecar-2", 1))).accepted == 1000  # spends A's budget
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await record(a, request(100, "sidecar-2", 2))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A marker after it on the stream: an empty batch costs no budget. Once B has
    # learned it, it has read everything A published before.
    marker = await record(a, request(0, "sidecar-2", 3))
    assert marker.duplicate_batches == 0
    await wait_for(lambda: b.servicer.ledger.knows("127.0.0.1", "sidecar-2", 3))
    assert not b.servicer.ledger.knows("127.0.0.1", "sidecar-2", 2)

    resend = await record(b, request(100, "sidecar-2", 2))  # the sidecar retries at B
    assert (resend.accepted, resend.duplicate_batches) == (100, 0)
    assert attempts(b) == 1100
    await wait_for(lambda: attempts(a) == 1100)  # and A gets it from B, once


async def test_ids_from_the_stream_stay_within_the_ledger_bounds(
    tmp_path, redis_server: RedisServer
) -> None:
    app = await start(tmp_path, "solo", redis_server)
    try:
        assert app.replicator is not None
        client = redis_server.client()
        # A peer (or a corrupt writer) floods ids: more callers, senders per
        # caller and ids per sender than the ledger keeps.
        flood = [[f"caller-{i}", "s", 1] for i in range(MAX_TRACKED_CALLERS + 100)]
        flood += [["caller-x", f"sender-{i}", 1] for i in range(MAX_SENDERS_PER_CALLER + 10)]
        flood += [["caller-x", "busy", n] for n in range(1, BATCH_IDS_REMEMBERED + 101)]
        pipe = client.pipeline(transaction=False)
        for seq, start_at in enumerate(range(0, len(flood), 1000), start=1):
            rows = orjson.dumps(flood[start_at : start_at + 1000])
            pipe.xadd(STREAM, {"r": "peer", "s": seq, "o": b"[]", "b": rows})
        bad = [
            b'[["c", "s", 0]]',  # sequence 0
            orjson.dumps([["c" * 129, "s", 1]]),  # caller too long
            orjson.dumps([["c", "s", 1]] * 1001),  # too many in one entry
        ]
        for seq, rows in enumerate(bad, start=100):
            pipe.xadd(STREAM, {"r": "peer", "s": seq, "o": b"[]", "b": rows})
        pipe.execute()
        stats = app.replicator.stats
        await wait_for(lambda: stats.batch_ids_learned == len(flood) and stats.bad_entries == 3)

        ledger = app.servicer.ledger
        assert ledger.tracked == MAX_TRACKED_CALLERS
        senders = ledger._callers["caller-x"].senders  # the ledger's own bounded structure
        assert len(senders) == MAX_SENDERS_PER_CALLER
        busy = senders["busy"]
        assert len(busy.seen) == len(busy.order) == BATCH_IDS_REMEMBERED
        assert busy.floor == 100  # forgotten ids still count as applied
        assert "c" not in ledger._callers  # nothing of the refused entries was kept
        assert not ledger.accepted and not ledger.duplicates  # learning counts nothing
    finally:
        await app.stop()


async def metrics_of(app: RouterApp) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{app.http_url}/metrics") as r:
        return await r.text()


async def test_ids_buffered_while_redis_is_down_are_bounded_then_published(
    tmp_path, redis_server: RedisServer
) -> None:
    quick = {"buffer_max_outcomes": 100, "backoff_max_s": 0.2}
    a = await start(tmp_path, "a", redis_server, quick)
    b = await start(tmp_path, "b", redis_server, quick)
    try:
        assert a.replicator is not None and b.replicator is not None
        redis_server.kill()
        await wait_for(lambda: not a.replicator.connected)
        for sequence in range(1, 151):  # empty batches: ids only, no outcomes
            assert (await record(a, request(0, "sidecar-3", sequence))).duplicate_batches == 0
        # An id weighs as one outcome in the publish buffer; they share entries.
        buffered = a.replicator._buffered_ids
        dropped = a.replicator.stats.batch_ids_dropped
        assert buffered <= 100 and dropped >= 50 and buffered + dropped == 150
        assert len(a.replicator._buffer) < buffered  # several ids per entry

        redis_server.start()
        await wait_for(lambda: b.servicer.ledger.knows("127.0.0.1", "sidecar-3", 150))
        assert b.replicator.stats.batch_ids_learned == buffered
        assert not b.servicer.ledger.knows("127.0.0.1", "sidecar-3", dropped)  # dropped: unknown
        assert b.servicer.ledger.knows("127.0.0.1", "sidecar-3", dropped + 1)
    finally:
        await a.stop()
        await b.stop()


async def test_ids_riding_on_one_unsent_entry_are_bounded_too() -> None:
    """Batch ids ride on the newest entry not yet sent (up to IDS_PER_ENTRY), and the
    bound only dropped whole entries, never the last one: with no publish attempt in
    between (Redis down, the publish loop in its backoff) 149 ids sat in one entry
    against a bound of 100. Told without a Redis: the replicator is never started."""
    clock = FakeClock()
    core = RouterCore(load_catalog(EXAMPLE_CATALOG), "v1", clock, random.Random(1))
    config = ReplicationConfig(url="redis://127.0.0.1:9/0", buffer_max_outcomes=100)
    replicator = RedisReplicator(config, core, clock)
    for sequence in range(1, 151):
        replicator.publish_batch_id("caller", "sidecar-3", sequence)
    assert replicator._buffered_ids == 100
    assert replicator.stats.batch_ids_dropped == 50
    kept = [key for unit in replicator._buffer for key in unit.batch_ids]
    assert kept == [("caller", "sidecar-3", s) for s in range(51, 151)]  # the oldest went
