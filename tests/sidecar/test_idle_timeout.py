"""IdleTimeout: the lazily re-armed between-chunks timeout, on a real event loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from sidecar.idle_timeout import IdleTimeout


async def _read_all(queue: asyncio.Queue[bytes | None], timeout_s: float) -> tuple[int, bool]:
    """Read until None; (items read, timed out)."""
    idle = IdleTimeout(timeout_s)
    n = 0
    try:
        while True:
            try:
                item = await queue.get()
            except asyncio.CancelledError:
                if idle.absorb():
                    return n, True
                raise
            if item is None:
                return n, False
            idle.touch()
            n += 1
    finally:
        idle.close()


async def test_silence_longer_than_the_timeout_is_reported_not_before() -> None:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    queue.put_nowait(b"a")
    t0 = time.monotonic()
    n, timed_out = await _read_all(queue, 0.1)
    assert (n, timed_out) == (1, True)
    assert time.monotonic() - t0 >= 0.1
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_chunks_more_often_than_the_timeout_keep_the_stream_alive() -> None:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    # 8 chunks 0.05 s apart: 0.4 s in all, well past the 0.25 s timeout, never 0.25 s silent.
    for i in range(8):
        loop.call_later(0.05 * (i + 1), queue.put_nowait, b"x")
    loop.call_later(0.45, queue.put_nowait, None)
    assert await _read_all(queue, 0.25) == (8, False)


async def test_paused_time_does_not_count() -> None:
    idle = IdleTimeout(0.1)
    try:
        idle.pause()
        done = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, done.set)
        await done.wait()  # "writing to a slow app" for 3x the timeout
        idle.resume()
        assert not idle.fired
    finally:
        idle.close()


async def test_a_cancellation_from_elsewhere_is_not_swallowed() -> None:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    reader = asyncio.create_task(_read_all(queue, 10.0))
    await asyncio.sleep(0)  # let it start waiting
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
