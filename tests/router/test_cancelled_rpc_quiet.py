"""A caller that cancels mid-call is not a router failure.

Found by a churn audit: a StreamOutcomes caller cancelling just as the router
wrote to its call made gRPC raise from that write (``ExecuteBatchError``); the
method wrapper logged ``rpc failed`` at ERROR with a traceback and counted
INTERNAL, about 3 times in 3,000 random cancels: caller-triggered, unbounded,
and enough to fire an alert on INTERNAL. A real gRPC server on loopback serves
one method through the same wrapper; it raises only after the client has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
import pytest
from grpc._cython.cygrpc import ExecuteBatchError

from router_service.grpc_api import RpcCounter, _counted

METHOD = "/test.Quiet/Wait"


class _Servicer:
    """What ``_counted`` needs of a servicer: admission and the counter."""

    def __init__(self) -> None:
        self.rpc_counter = RpcCounter()
        self.entered = asyncio.Event()

    async def _admit(self, name: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        return None

    @_counted
    async def Wait(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        gone = asyncio.Event()
        context.add_done_callback(lambda _ctx: gone.set())
        self.entered.set()
        # gRPC cancels the handler's task when the client goes; a handler in the
        # middle of a write sees that write fail instead.
        with contextlib.suppress(asyncio.CancelledError):
            await gone.wait()
        raise ExecuteBatchError("execute_batch failed: the client closed the call")


async def _served(servicer: _Servicer) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "test.Quiet", {"Wait": grpc.unary_unary_rpc_method_handler(servicer.Wait)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_call_failing_after_its_client_cancelled_is_counted_cancelled_and_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    servicer = _Servicer()
    server, port = await _served(servicer)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(METHOD)(b"")
            await asyncio.wait_for(servicer.entered.wait(), 5)
            with caplog.at_level(logging.DEBUG):
                call.cancel()
                await _wait_for(lambda: servicer.rpc_counter.counts)
        assert servicer.rpc_counter.counts == {("Wait", "CANCELLED"): 1}
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        await server.stop(None)
