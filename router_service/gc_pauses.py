"""Keeps the garbage collector's full passes short, so they do not land in ranking's p99.

CPython's cyclic collector stops the one thread that serves every call while
it walks all tracked container objects of a generation. After start the
router's heap is mostly what never goes away: the modules, grpc, protobuf and
numpy's objects, the catalog. A full (oldest generation) pass walks all of it;
measured under full outcome ingestion (bench/bench_router.py --scenario
starvation) one took 42 ms, stalling every in-flight RankProviders call at once,
while the whole of ranking's p50 was ~20 ms.

``gc.freeze()`` moves every object alive at that moment to a permanent
generation that collections skip (what Instagram does for the same reason, and
the documented use of the call). What the router allocates later, its
bounded state and every request's transient objects, is still collected as
before; only cyclic garbage among the frozen startup objects would never be
reclaimed, and startup makes none worth the name. It is a process-wide
decision, so the command-line entry point makes it once, after start; library
users of ``RouterApp`` (tests start many routers in one process) are left alone.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_startup_heap() -> int:
    """Collect once, then freeze what survives; returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("startup heap frozen for the garbage collector", extra={"objects": frozen})
    return frozen
