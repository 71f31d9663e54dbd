"""Fixtures shared across the suite: the example catalog and a real router on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

# The suite forks child processes (sidecars, routers, redis-server) from a process whose
# in-process routers run gRPC threads. gRPC core's fork handlers then ran in the child
# between fork and exec and, about once in six starts under load, killed it there
# (``epoll_wait error: Bad file descriptor`` on the child's stderr, "exited early").
# The children exec at once and need no gRPC state: no handlers. Read when grpc loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CATALOG = REPO_ROOT / "router_common" / "examples" / "catalog.yaml"


async def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02):
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``.

    The suite synchronises on conditions, never on fixed sleeps: the deadline
    only bounds how long a broken build takes to fail.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[int]:
    """Serve an ``aiohttp.web.Application`` on a free loopback port (yields the port)
    for a test's own upstream or page, and clean it up however the test ends."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


class FakeClock:
    """A mutable clock: tests move time explicitly, nothing sleeps."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def loopback_router(tmp_path: Path, clock: Callable[[], float] | None = None, **settings: Any):
    """A RouterApp (not started) on OS-picked loopback ports, with a private copy of
    the example catalog; ``settings`` override the Settings defaults."""
    from router_service.app import RouterApp, Settings

    config = tmp_path / "catalog.yaml"
    config.write_text(EXAMPLE_CATALOG.read_text())
    base = {"grpc_host": "127.0.0.1", "grpc_port": 0, "http_host": "127.0.0.1", "http_port": 0}
    app_settings = Settings(config_path=str(config), **{**base, **settings})
    return RouterApp(app_settings) if clock is None else RouterApp(app_settings, clock=clock)


@pytest.fixture
def example_catalog() -> Path:
    return EXAMPLE_CATALOG


@pytest.fixture
async def router_app(tmp_path: Path) -> AsyncIterator:
    """A real router on loopback ports picked by the OS, with a private copy of the catalog."""
    app = loopback_router(tmp_path, drain_seconds=1.0, seed=1234)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@pytest.fixture
async def router_stub(router_app) -> AsyncIterator:
    from router_common.pb import router_pb2_grpc

    async with grpc.aio.insecure_channel(router_app.grpc_address) as channel:
        yield router_pb2_grpc.RouterStub(channel)
