"""Outcomes the router rejects are visible at the sidecar: counted, and logged without spam.

Real router, real sidecar, fake providers on loopback.
"""

from __future__ import annotations

import logging
import time

import aiohttp
import pytest
from sidecar_helpers import MODEL, Stack

from router_common.pb import router_pb2


def _metric(text: str, name: str) -> float:
    (line,) = (ln for ln in text.splitlines() if ln.startswith(name + " "))
    return float(line.split()[1])


async def test_rejected_outcomes_are_counted_and_logged_once_per_cause(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """A cause that lasts rejects at every flush (0.5 s apart): the warning used to be
    written at every one, and no metric said how many outcomes the router refused."""
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    router = await stack.start_router()
    sidecar = await stack.start_sidecar(router.grpc_address, outcome_flush_interval_s=60.0)
    reporter = sidecar.reporter
    assert reporter is not None
    caplog.set_level(logging.WARNING, logger="sidecar.outcomes")
    gone = router_pb2.Outcome(model=MODEL, provider="gone", started_at=time.time(), success=True)
    for flush in range(1, 4):
        reporter.submit(gone)
        reporter.submit(gone)
        assert await reporter.flush_once()
        assert router.core.outcomes_rejected == 2 * flush
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{sidecar.port}/metrics") as r,
    ):
        assert _metric(await r.text(), "router_sidecar_outcomes_rejected_total") == 6
    (line,) = [r for r in caplog.records if r.getMessage() == "router rejected outcomes"]
    assert line.cause == "provider"  # type: ignore[attr-defined]
    assert "not in the catalog" in line.first_reason  # type: ignore[attr-defined]
