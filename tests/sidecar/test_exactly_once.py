"""Exactly-once outcomes through a real sidecar and a real router.

The double count the issue reproduced: a StreamOutcomes call applies its first
batch, then fails (here: the caller's rate limit); a sender without batch ids
resends everything and the first batch is counted twice. The sidecar's batches
carry ids and it reads which ones were applied, so every attempt counts once.
"""

from __future__ import annotations

import socket
import time

import grpc
from sidecar_helpers import MODEL, Stack, openai_client, wait_for

from router_common.pb import router_pb2, router_pb2_grpc
from router_service.app import RouterApp, Settings
from router_service.callers import CallerLimitsConfig
from router_service.security import SecuritySettings
from tests.conftest import FakeClock


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outcomes(n: int, ids: tuple[str, int] | None = None) -> router_pb2.RecordOutcomeRequest:
    request = router_pb2.RecordOutcomeRequest(
        outcomes=[router_pb2.Outcome(model=MODEL, provider="alpha", success=True)] * n
    )
    if ids:
        request.batch_id.sender, request.batch_id.sequence = ids
    return request


async def test_a_failed_stream_is_not_counted_twice(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}, "beta": {}})
    catalog = stack.write_catalog()
    tokens = stack.tmp / "tokens.yaml"
    tokens.write_text("callers:\n  app-sidecars: {token: drain-token-1, scopes: [rank, report]}\n")
    (stack.tmp / "sidecar-token").write_text("sidecar-token-1\n")
    clock = FakeClock(time.time())
    port = _free_port()
    router = RouterApp(
        Settings(
            config_path=str(catalog),
            grpc_host="127.0.0.1",
            grpc_port=port,
            http_host="127.0.0.1",
            http_port=0,
            drain_seconds=0.2,
            watch_catalog=False,
            security=SecuritySettings(
                auth_tokens=str(tokens),
                reload_interval_s=0.05,
                caller_limits=CallerLimitsConfig(outcomes_per_second=1, outcome_burst=1000),
            ),
        ),
        clock=clock,
    )
    await router.start()
    stack.router = router  # torn down by the stack
    drain = (("authorization", "Bearer drain-token-1"),)
    async with grpc.aio.insecure_channel(router.grpc_address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        # 1. The bug, as the issue saw it: no ids, a stream failing after its first batch.
        await stub.RecordOutcome(_outcomes(997), metadata=drain)  # 3 outcomes of budget left
        before = sum(router.core.outcomes_by_class.values())
        for _ in range(2):  # the first attempt fails partway; the sender resends it all
            try:
                await stub.StreamOutcomes(iter([_outcomes(2), _outcomes(2)]), metadata=drain)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            clock.advance(2)
        assert sum(router.core.outcomes_by_class.values()) - before == 2 + 2  # one batch twice
        clock.advance(1000)  # refill
        await stub.RecordOutcome(_outcomes(997), metadata=drain)
    # 2. The sidecar: its token becomes the same caller, whose budget is nearly spent.
    sc = await stack.start_sidecar(
        f"127.0.0.1:{port}",
        fallback=True,
        router_token_file=str(stack.tmp / "sidecar-token"),
        outcome_batch_size=2,
        outcome_flush_interval_s=60.0,
    )
    client = openai_client(sc)
    for _ in range(6):
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    assert sc.reporter.backlog == 6
    tokens.write_text(
        "callers:\n  app-sidecars: {token: sidecar-token-1, scopes: [rank, report]}\n"
    )
    before = sum(router.core.outcomes_by_class.values())

    async def first_batch_applied() -> bool:
        await sc.reporter.flush_once()
        return sc.reporter.backlog == 4

    await wait_for(first_batch_applied, timeout=3)  # batch 1 applied, 2 refused
    assert sc.reporter.failures >= 1
    assert sum(router.core.outcomes_by_class.values()) - before == 2
    clock.advance(10)  # budget for the rest
    assert await sc.reporter.flush_once()
    assert sc.reporter.backlog == 0
    assert sum(router.core.outcomes_by_class.values()) - before == 6  # each attempt once
    assert router.servicer.ledger.accepted["app-sidecars"] == 997 * 2 + 4 + 6
