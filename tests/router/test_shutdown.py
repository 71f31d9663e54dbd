"""Bounded shutdown steps: an overrun is abandoned and named, a cancelled task is a clean end."""

from __future__ import annotations

import asyncio
import logging

from router_common.shutdown import bounded


async def test_overrunning_step_is_abandoned_and_named(caplog) -> None:
    never = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="router_common.shutdown"):
        assert await bounded(never.wait(), 0.05, "drain gRPC") is False
    assert caplog.records[0].step == "drain gRPC"


async def test_cancelled_task_counts_as_stopped() -> None:
    task = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    task.cancel()
    assert await bounded(task, 1.0, "refresh") is True


async def test_failing_step_does_not_raise(caplog) -> None:
    async def boom() -> None:
        raise RuntimeError("socket already closed")

    with caplog.at_level(logging.ERROR, logger="router_common.shutdown"):
        assert await bounded(boom(), 1.0, "close HTTP") is False
    assert "shutdown step failed" in caplog.text
