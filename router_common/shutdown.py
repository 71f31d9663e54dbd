"""Bounded shutdown steps, shared by the router and the sidecar.

A process that hangs on SIGTERM is worse than one that drops a little work:
Kubernetes kills it at the grace period anyway, and tests hang. Each step of a
shutdown gets a deadline; one that overruns is logged by name and abandoned,
so the next steps still run and the operator learns which part was stuck.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

log = logging.getLogger(__name__)


async def bounded(step: Awaitable[object], seconds: float, what: str) -> bool:
    """Await ``step`` for at most ``seconds``; False (and a warning) if it overran or failed."""
    try:
        async with asyncio.timeout(seconds):
            await step
    except TimeoutError:
        log.warning("shutdown step overran its deadline", extra={"step": what, "seconds": seconds})
        return False
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        return True  # the step was a cancelled task: that is how it ends
    except Exception:
        log.exception("shutdown step failed", extra={"step": what})
        return False
    return True
