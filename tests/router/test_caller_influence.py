"""What one caller can do to the router: rate-limited, de-duplicated, capped, kept out.

A real router on loopback, real gRPC; the clock is a FakeClock so budgets and
ejections are exact.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import grpc
import pytest

from router_common.domain import EndpointKey
from router_common.pb import router_pb2, router_pb2_grpc
from router_service.callers import CallerLimitsConfig
from router_service.model import HealthState
from router_service.security import SecuritySettings
from tests.conftest import FakeClock, loopback_router, wait_for

MODEL = "zai/glm-4.7"


def ok(provider: str = "cerebras", ttft: float = 300.0) -> router_pb2.Outcome:
    return router_pb2.Outcome(
        model=MODEL, provider=provider, success=True, ttft_ms=ttft, duration_ms=900.0
    )


def batch(
    n: int, sequence: int | None = None, sender: str = "pod-a"
) -> router_pb2.RecordOutcomeRequest:
    request = router_pb2.RecordOutcomeRequest(outcomes=[ok() for _ in range(n)])
    if sequence is not None:
        request.batch_id.sender, request.batch_id.sequence = sender, sequence
    return request


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def limited(tmp_path: Path, clock: FakeClock):
    limits = CallerLimitsConfig(outcomes_per_second=1000, outcome_burst=1000)
    app = loopback_router(
        tmp_path,
        clock,
        drain_seconds=0.2,
        watch_catalog=False,
        security=SecuritySettings(caller_limits=limits),
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.grpc_address) as channel:
            yield app, router_pb2_grpc.RouterStub(channel), channel
    finally:
        await app.stop()


def attempts(app) -> int:
    return sum(app.core.outcomes_by_class.values())


async def test_rate_limit_is_per_caller_resource_exhausted_and_counted(limited, clock) -> None:
    app, stub, _ = limited
    assert (await stub.RecordOutcome(batch(1000))).accepted == 1000
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RecordOutcome(batch(10))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "outcome rate limit" in info.value.details()
    assert attempts(app) == 1000  # the refused batch changed nothing
    clock.advance(0.011)  # 11 outcomes of budget (10 asked)
    assert (await stub.RecordOutcome(batch(10))).accepted == 10
    async with aiohttp.ClientSession() as http, http.get(f"{app.http_url}/metrics") as resp:
        text = await resp.text()
    assert 'router_caller_outcomes_rate_limited_total{caller="127.0.0.1"} 10.0' in text
    assert 'router_caller_outcomes_accepted_total{caller="127.0.0.1"} 1010.0' in text


async def test_a_resent_batch_is_acknowledged_but_applied_once(limited) -> None:
    app, stub, _ = limited
    first = await stub.RecordOutcome(batch(5, sequence=1))
    again = await stub.RecordOutcome(batch(5, sequence=1))
    assert (first.accepted, first.duplicate_batches) == (5, 0)
    assert (again.accepted, again.duplicate_batches, list(again.applied_sequences)) == (0, 1, [1])
    other_sender = await stub.RecordOutcome(batch(5, sequence=1, sender="pod-b"))
    assert other_sender.accepted == 5
    assert attempts(app) == 10
    for bad, field in (
        (router_pb2.BatchId(sender="", sequence=3), "batch_id.sender"),
        (router_pb2.BatchId(sender="pod-a", sequence=0), "batch_id.sequence"),
    ):
        request = batch(1)
        request.batch_id.CopyFrom(bad)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.RecordOutcome(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(field)


async def test_a_stream_failing_partway_says_what_was_applied(limited) -> None:
    app, stub, channel = limited
    raw = channel.stream_unary(
        "/router.v1.Router/StreamOutcomes",
        request_serializer=lambda b: b,
        response_deserializer=router_pb2.OutcomeAck.FromString,
    )
    good = [batch(3, sequence=s).SerializeToString() for s in (1, 2)]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(iter([*good, b"\x0a\xff"]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailers = dict(info.value.trailing_metadata())
    assert trailers["router-applied-sequences"] == "1,2"
    assert "2 batch(es) of this call were applied" in info.value.details()
    assert attempts(app) == 6
    # The sender resends everything (fixed): only the new batch is applied.
    ack = await stub.StreamOutcomes(iter([batch(3, sequence=s) for s in (1, 2, 3)]))
    assert (ack.accepted, ack.duplicate_batches, list(ack.applied_sequences)) == (3, 2, [1, 2, 3])
    assert attempts(app) == 9


async def test_a_stream_open_at_its_deadline_still_says_what_was_applied(limited) -> None:
    # A client's deadline used to end the call on the client's own clock: the
    # DEADLINE_EXCEEDED it saw was made up by its gRPC library, with no trailing
    # metadata, so the `router-applied-sequences` the proto promises for a
    # deadline never arrived. The router now ends the stream itself shortly
    # before the deadline, while it waits for the next message, and says.
    app, stub, _ = limited
    never = asyncio.Event()

    async def batches():
        yield batch(3, sequence=1)
        await never.wait()  # the stream stays open, as a slow sender's does

    call = stub.StreamOutcomes(batches(), timeout=2.0)
    await wait_for(lambda: attempts(app) == 3)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert dict(info.value.trailing_metadata() or ()).get("router-applied-sequences") == "1"
    details = info.value.details() or ""
    assert "deadline" in details and "sequences [1]" in details


async def test_a_batch_queued_at_the_deadline_is_applied_and_not_listed(limited) -> None:
    # The deadline comes while a batch waits for the ingestion lock (another
    # writer holds it): the answer lists only what was applied by then; the
    # queued batch, already admitted, is applied in full afterwards and a resend
    # of it is acknowledged as a duplicate.
    app, stub, _ = limited
    second = asyncio.Event()

    async def batches():
        yield batch(3, sequence=1)
        await second.wait()
        yield batch(3, sequence=2)

    call = stub.StreamOutcomes(batches(), timeout=2.0)
    await wait_for(lambda: attempts(app) == 3)
    lock = app.servicer.ingestor._lock
    await lock.acquire()  # another writer, mid-batch
    try:
        second.set()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
    finally:
        lock.release()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert dict(info.value.trailing_metadata() or ()).get("router-applied-sequences") == "1"
    await wait_for(lambda: attempts(app) == 6)
    ack = await stub.StreamOutcomes(iter([batch(3, sequence=s) for s in (1, 2)]))
    assert (ack.accepted, ack.duplicate_batches) == (0, 2)
    assert attempts(app) == 6


async def test_malformed_requests_are_invalid_argument_counted_and_logged_once(
    limited, caplog
) -> None:
    app, _, channel = limited
    raw = channel.unary_unary(
        "/router.v1.Router/RankProviders",
        request_serializer=lambda b: b,
        response_deserializer=router_pb2.RankProvidersResponse.FromString,
    )
    bad_utf8 = (
        router_pb2.RankProvidersRequest(model="abc")
        .SerializeToString()
        .replace(b"abc", b"a\xff\xfe")
    )
    caplog.set_level(logging.WARNING)
    details = set()
    for payload in [bad_utf8] * 20 + [b"\x0a\xff"] * 20:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(payload)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details.add(info.value.details())
    assert details == {
        "a string field is not valid UTF-8",
        "the message is not valid protobuf wire format",
    }
    assert app.servicer.rpc_counter.counts[("RankProviders", "INVALID_ARGUMENT")] == 40
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(lines) == 2  # once per cause per interval
    assert not any(r.exc_info for r in caplog.records)
    # A stream's malformed message is logged with its method too (the line had
    # no `method` field, so a log query by method missed StreamOutcomes' junk).
    stream = channel.stream_unary(
        "/router.v1.Router/StreamOutcomes",
        request_serializer=lambda b: b,
        response_deserializer=router_pb2.OutcomeAck.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream(iter([b"\x0a\xff"]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    streamed = [r for r in caplog.records if "StreamOutcomes:" in getattr(r, "cause", "")]
    assert [getattr(r, "method", None) for r in streamed] == ["StreamOutcomes"]


async def test_what_a_compromised_reporting_caller_can_still_do(tmp_path: Path, clock) -> None:
    """README "What one compromised caller can do": bounded ejection, bounded volume, no reads."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "callers:\n"
        "  evil: {token: evil-token-1, scopes: [report]}\n"
        "  honest: {token: honest-token-1, scopes: [rank, report, read]}\n"
    )
    limits = CallerLimitsConfig(outcomes_per_second=100, outcome_burst=1000)
    app = loopback_router(
        tmp_path,
        clock,
        drain_seconds=0.2,
        watch_catalog=False,
        security=SecuritySettings(auth_tokens=str(tokens), caller_limits=limits),
    )
    await app.start()
    evil = (("authorization", "Bearer evil-token-1"),)
    honest = (("authorization", "Bearer honest-token-1"),)
    try:
        async with grpc.aio.insecure_channel(app.grpc_address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            forged = router_pb2.Outcome(
                model=MODEL,
                provider="cerebras",
                success=False,
                error_class=router_pb2.ERROR_CLASS_RATE_LIMITED,
                http_status=429,
                retry_after_seconds=86_400,
            )
            ack = await stub.RecordOutcome(
                router_pb2.RecordOutcomeRequest(outcomes=[forged]), metadata=evil
            )
            assert ack.accepted == 1
            view = app.core.health_view(EndpointKey(MODEL, "cerebras"))
            # 1. It can eject an endpoint, but for at most health.max_retry_after_s.
            cap = app.settings.health.max_retry_after_s
            assert view.state is HealthState.EJECTED
            assert view.ejected_until is not None and view.ejected_until <= clock.now + cap
            # 2. Its volume is capped: past its burst it is refused, the others are not.
            flood = router_pb2.RecordOutcomeRequest(outcomes=[ok(ttft=1.0)] * 999)
            assert (await stub.RecordOutcome(flood, metadata=evil)).accepted == 999
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.RecordOutcome(flood, metadata=evil)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            fair = router_pb2.RecordOutcomeRequest(outcomes=[ok("together")] * 10)
            assert (await stub.RecordOutcome(fair, metadata=honest)).accepted == 10
            # 3. It cannot rank or read with a report-only token.
            for call in (
                stub.RankProviders(router_pb2.RankProvidersRequest(model=MODEL), metadata=evil),
                stub.GetHealth(router_pb2.GetHealthRequest(), metadata=evil),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # 4. After the capped ejection the endpoint comes back for honest traffic.
            clock.advance(cap + 1)
            ranked = await stub.RankProviders(
                router_pb2.RankProvidersRequest(model=MODEL), metadata=honest
            )
            assert "cerebras" in [e.provider.name for e in ranked.endpoints]
        assert app.servicer.ledger.accepted["evil"] == 1000
        assert app.servicer.ledger.rate_limited["evil"] == 999
    finally:
        await app.stop()


async def test_success_contradicting_http_status_is_rejected(limited) -> None:
    _, stub, _ = limited
    forged = router_pb2.Outcome(model=MODEL, provider="cerebras", success=True, http_status=429)
    fine = router_pb2.Outcome(model=MODEL, provider="cerebras", success=True, http_status=200)
    ack = await stub.RecordOutcome(router_pb2.RecordOutcomeRequest(outcomes=[forged, fine]))
    assert (ack.accepted, ack.rejected) == (1, 1)
    assert ack.rejections[0].reason == (
        "http_status: 429 contradicts success true (must be 0 or 200..299)"
    )
