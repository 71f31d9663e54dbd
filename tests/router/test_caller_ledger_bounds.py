"""The per-caller counters stay within the tracked callers (found by a leak audit).

A batch is charged to its caller's bucket, then waits for ingestion (one writer
at a time). When enough other callers arrive meanwhile, the caller is forgotten
(the ledger tracks ``MAX_TRACKED_CALLERS``) and its counter rows are dropped
with it; the batch's accepted count, added when it was applied, recreated a row
for a caller nobody tracked any more, which no later eviction removed: with
callers named by peer address (``--allow-unauthenticated``, IPv6) the
``router_caller_outcomes_accepted_total`` series then grew without bound.
"""

from __future__ import annotations

import asyncio
import random

from router_common.catalog import load_catalog
from router_common.limits import MAX_TRACKED_CALLERS
from router_common.pb import router_pb2
from router_service.callers import CallerLedger, CallerLimitsConfig
from router_service.core import RouterCore
from router_service.ingest import Ingestor
from tests.conftest import EXAMPLE_CATALOG, FakeClock, wait_for
from tests.router.pb_builders import outcome


async def test_a_caller_forgotten_while_its_batch_waits_leaves_no_counter_row() -> None:
    clock = FakeClock()
    core = RouterCore(load_catalog(str(EXAMPLE_CATALOG)), "v1", clock, random.Random(1))
    ledger = CallerLedger(CallerLimitsConfig(), clock)
    ingestor = Ingestor(core, ledger, lambda: None, monotonic=clock)
    batch = router_pb2.RecordOutcomeRequest(outcomes=[outcome("cerebras", started_at=clock())])
    await ingestor._lock.acquire()  # another writer's batch is being applied
    try:
        first = asyncio.create_task(ingestor.apply("caller-0", batch, 0))
        await wait_for(lambda: ledger.tracked == 1, timeout=5)  # charged, now waiting
        others = [
            asyncio.create_task(ingestor.apply(f"caller-{i}", batch, 0))
            for i in range(1, MAX_TRACKED_CALLERS + 1)
        ]
        await wait_for(lambda: "caller-0" not in ledger._callers, timeout=30)  # forgotten
    finally:
        ingestor._lock.release()
    results = await asyncio.gather(first, *others)
    assert all(r.result.accepted == 1 for r in results)  # every batch was applied
    assert ledger.tracked == MAX_TRACKED_CALLERS
    assert set(ledger.accepted) <= set(ledger._callers)
    assert len(ledger.accepted) <= MAX_TRACKED_CALLERS
