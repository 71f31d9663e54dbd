"""Fixtures of the replication tests: a real redis-server and real router processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.replication.fleet import RedisServer, RouterProcess


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[RouterProcess]]:
    """Three router replicas sharing ``redis_server``, all SERVING."""
    routers = [RouterProcess(tmp_path, f"r{i}", redis_server.url) for i in range(3)]
    try:
        for r in routers:
            r.start()
        for r in routers:
            r.wait_started()
        yield routers
    finally:
        for r in routers:
            r.kill()
