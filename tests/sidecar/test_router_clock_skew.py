"""A sidecar whose node clock is off still teaches the router (sidecar/router_clock.py).

The router judges and buckets an outcome by its ``started_at``. A sidecar 2
minutes ahead of the router had every outcome rejected (beyond the 60 s
future limit); one 2 hours behind had every outcome accepted into buckets 2
hours old, outside the 5-minute and 1-hour windows ranking and the dashboard
read. Either way the router learned nothing, and only the first case logged
anything. Real router, real sidecar, fake providers on loopback; the skewed
node is the sidecar's injected wall clock.
"""

from __future__ import annotations

import logging
import socket
import time

import aiohttp
import pytest
from sidecar_helpers import MODEL, Stack, key_env, key_value, openai_client, wait_for
from sidecar_helpers import test_settings as sidecar_settings

from sidecar.app import SidecarApp
from sidecar.router_clock import RouterClock


async def _window_samples(http_url: str) -> tuple[int, int]:
    """(TTFT samples in the router's 5-minute window, attempts in its 15-minute window),
    summed over the model's endpoints."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{http_url}/v1/models/{MODEL}/endpoints") as r,
    ):
        doc = await r.json()
    endpoints = doc["data"]["endpoints"]
    return (
        sum(e["sample_size_last_5m"] for e in endpoints),
        sum(e["attempts"]["last_15m"] for e in endpoints),
    )


async def _stream(sidecar: SidecarApp) -> None:
    """One streamed chat completion, read to its end (so TTFT is measured)."""
    stream = await openai_client(sidecar).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    async for _chunk in stream:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric(text: str, name: str) -> float:
    (line,) = (ln for ln in text.splitlines() if ln.startswith(name + " "))
    return float(line.split()[1])


@pytest.mark.parametrize("skew_s", [120.0, -7200.0], ids=["2-minutes-ahead", "2-hours-behind"])
async def test_a_skewed_sidecar_clock_still_lands_in_the_routers_windows(
    stack: Stack, skew_s: float, caplog: pytest.LogCaptureFixture
) -> None:
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.write_catalog()
    router = await stack.start_router()
    settings = sidecar_settings(
        router=router.grpc_address, environ={key_env(n): key_value(n) for n in stack.providers}
    )
    caplog.set_level(logging.INFO, logger="sidecar.router_clock")
    sidecar = SidecarApp(settings, wall_clock=lambda: time.time() + skew_s)
    stack.sidecar = sidecar  # torn down by the stack
    await sidecar.start()
    requests = 4
    for _ in range(requests):
        await _stream(sidecar)

    async def all_in_the_window() -> bool:
        return await _window_samples(router.http_url) == (requests, requests)

    await wait_for(all_in_the_window, timeout=10)
    assert router.core.outcomes_rejected == 0
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{sidecar.port}/metrics") as r,
    ):
        text = await r.text()
    offset = _metric(text, "router_sidecar_router_clock_offset_seconds")
    assert abs(offset + skew_s) < 1.0  # the router's clock minus this node's
    assert _metric(text, "router_sidecar_outcomes_rejected_total") == 0
    (warning,) = [r for r in caplog.records if "clock differs" in r.getMessage()]
    assert abs(warning.offset_s + skew_s) < 1.0  # type: ignore[attr-defined]


async def test_outcomes_queued_before_the_router_first_answered_are_shifted_too(
    stack: Stack,
) -> None:
    """A sidecar that starts while the router is unreachable serves from its fallback
    catalog and queues its outcomes before any answer gave it the offset: they are
    shifted by the first offset measured, not sent on this node's clock. (The sender
    waits a minute between tries here, so the first answer comes before any resend:
    a resend that wins that race keeps this node's times, as the README says.)"""
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.write_catalog()
    port = _free_port()
    settings = sidecar_settings(
        router=f"127.0.0.1:{port}",
        fallback_catalog=str(stack.catalog_path),
        environ={key_env(n): key_value(n) for n in stack.providers},
        outcome_flush_interval_s=60.0,
        outcome_max_backoff_s=60.0,
    )
    sidecar = SidecarApp(settings, wall_clock=lambda: time.time() + 120)
    stack.sidecar = sidecar  # torn down by the stack
    await sidecar.start()
    reporter = sidecar.reporter
    assert reporter is not None
    queued = 3
    for _ in range(queued):
        await _stream(sidecar)
    await wait_for(lambda: reporter.backlog == queued, timeout=10)
    assert not sidecar.router_clock.measured
    router = await stack.start_router(port=port)
    sent = queued

    async def measured() -> bool:
        nonlocal sent
        await _stream(sidecar)  # from the fallback until the sidecar retries the router
        sent += 1
        return sidecar.router_clock.measured

    await wait_for(measured, timeout=10)

    async def delivered() -> bool:
        await reporter.flush_once()
        return reporter.backlog == 0

    await wait_for(delivered, timeout=10)

    async def all_in_the_window() -> bool:
        return await _window_samples(router.http_url) == (sent, sent)

    await wait_for(all_in_the_window, timeout=10)
    assert router.core.outcomes_rejected == 0


def test_no_offset_from_a_reading_across_a_clock_step_or_from_a_silent_router() -> None:
    """A step of this node's clock during the call (received before sent) would put the
    whole step into the offset; a router that sends no ``ranked_at`` (0) says nothing."""
    seen: list[float] = []
    first: list[float] = []
    clock = RouterClock(wall=lambda: 1_000.0, on_offset=seen.append)
    clock.on_first_offset = first.append
    clock.observe(sent=1_000.0, ranked_at=0.0, received=1_000.2)
    assert not clock.measured
    clock.observe(sent=1_000.0, ranked_at=1_010.0, received=1_000.2)
    assert clock.offset_s == pytest.approx(9.9) and clock.now() == pytest.approx(1_009.9)
    clock.observe(sent=1_000.0, ranked_at=1_010.0, received=990.0)  # stepped back 10 s
    clock.observe(sent=1_000.0, ranked_at=0.0, received=1_000.2)
    assert clock.offset_s == pytest.approx(9.9)
    assert seen == [pytest.approx(9.9)]
    clock.observe(sent=1_000.0, ranked_at=1_011.0, received=1_000.2)
    assert clock.measured and first == [pytest.approx(9.9)]  # once, with the first
