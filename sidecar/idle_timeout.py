"""The between-chunks timeout of a relayed stream, for a float store per chunk.

``asyncio.timeout`` around every read costs a timeout object, a timer heap push
and a cancel per chunk, and a stream is hundreds of chunks; at 32 concurrent
streams that was a visible share of the sidecar's CPU. ``IdleTimeout`` keeps
one timer per stream: a chunk only records when it arrived, and when the timer
fires it either re-arms for what is left of the window or cancels the reading
task. ``absorb`` then tells that cancellation apart from any other, as
``asyncio.timeout`` does (a cancellation from elsewhere is never swallowed).

Time spent writing to the app is paused out (``pause``/``resume``): an app that
reads slowly is not the provider falling silent.
"""

from __future__ import annotations

import asyncio
import time


class IdleTimeout:
    """Cancels the current task when no chunk arrived for ``timeout_s`` (outside pauses).

    Create it inside the task that reads; ``close()`` it when done.
    """

    __slots__ = (
        "_cancelling",
        "_fired",
        "_handle",
        "_last",
        "_loop",
        "_paused",
        "_task",
        "_timeout",
    )

    def __init__(self, timeout_s: float) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("IdleTimeout must be created inside a task")
        self._loop = asyncio.get_running_loop()
        self._task = task
        self._timeout = timeout_s
        self._cancelling = task.cancelling()
        self._last = time.monotonic()
        self._paused = False
        self._fired = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(timeout_s, self._check)

    def touch(self) -> None:
        """A chunk arrived: the silence starts again from now."""
        self._last = time.monotonic()

    def pause(self) -> None:
        """Writing to the app: this time does not count as upstream silence."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._last = time.monotonic()

    @property
    def fired(self) -> bool:
        return self._fired

    def absorb(self) -> bool:
        """In an ``except CancelledError``: True if the cancellation was this timeout's.

        Then it is consumed (the task's cancel count is restored) and the caller
        reports a timeout; otherwise the caller must re-raise.
        """
        return self._fired and self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        now = time.monotonic()
        due = self._last + self._timeout
        if self._paused:
            self._handle = self._loop.call_later(self._timeout, self._check)
        elif now < due:
            self._handle = self._loop.call_later(due - now, self._check)
        else:
            self._fired = True
            self._task.cancel()
