"""The sidecar's shutdown (SIGTERM/SIGINT run ``SidecarApp.stop``) with requests in flight.

Real router, real sidecar, real fake providers. Found by a fault audit: a
SIGTERM gave in-flight requests aiohttp's 2 s (4 s in effect), then closed
their connections: a streaming app got a body without its chunked end (curl:
"transfer closed with outstanding read data remaining"; SDKs read a network
error, or a complete answer), and the access log called it 499, the app's
doing. Now requests that end within ``--shutdown-grace-s`` end normally, and
the rest get an error they can read: a stream's error event and ``[DONE]``,
else a 503, both ``code: sidecar_shutting_down``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from sidecar_helpers import MODEL, Stack, wait_for

MSGS = [{"role": "user", "content": "hi"}]


async def _post(url: str, body: dict[str, Any]) -> tuple[int, str]:
    """One request read to its end (a cut body raises ``ClientPayloadError``)."""
    timeout = aiohttp.ClientTimeout(total=10.0)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, json=body) as resp,
    ):
        return resp.status, (await resp.read()).decode()


def _events(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


@pytest.fixture
async def providers(stack: Stack) -> Stack:
    # alpha streams 20 tokens/s; slow takes 20 s to its first token.
    await stack.add_providers(
        {"alpha": {"tokens_per_second": 20.0}, "slow": {"ttft_median_ms": 20_000.0}}
    )
    stack.write_catalog()
    return stack


async def test_shutdown_drains_short_requests_and_ends_long_ones_readably(
    providers: Stack,
) -> None:
    stack = providers
    router = await stack.start_router()
    sc = await stack.start_sidecar(
        router.grpc_address,
        shutdown_grace_s=1.5,
        first_byte_timeout_s=30.0,
        nonstream_timeout_s=30.0,
        chunk_timeout_s=30.0,
    )
    url = f"{sc.base_url}/chat/completions"
    alpha = {"only": ["alpha"]}

    def stream(max_tokens: int) -> dict[str, Any]:
        return {"model": MODEL, "messages": MSGS, "stream": True, "max_tokens": max_tokens}

    short = asyncio.create_task(_post(url, {**stream(10), "provider": alpha}))  # ~0.5 s
    long = asyncio.create_task(_post(url, {**stream(400), "provider": alpha}))  # ~20 s
    waiting = asyncio.create_task(  # no first token before the grace is over
        _post(url, {"model": MODEL, "messages": MSGS, "provider": {"only": ["slow"]}})
    )
    fake = stack.providers["alpha"]
    await wait_for(lambda: len(fake.requests) == 2 and len(stack.providers["slow"].requests) == 1)
    await wait_for(lambda: all(r.tokens > 0 for r in fake.requests))
    t0 = time.monotonic()
    stopping = asyncio.create_task(sc.stop())
    stack.sidecar = None  # stopped here, not again by the fixture

    # New connections are refused at once, while the in-flight requests go on.
    host, port = sc.base_url.removeprefix("http://").removesuffix("/v1").rsplit(":", 1)

    async def refused() -> bool:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except (ConnectionRefusedError, ConnectionResetError):
            return True
        writer.close()
        return False

    await wait_for(refused, timeout=1.0)

    # The short stream ends normally, within the grace.
    status, text = await short
    assert status == 200
    assert _events(text)[-1] == "[DONE]"
    assert "routing" in json.loads(_events(text)[-2])
    assert not any(json.loads(e).get("error") for e in _events(text)[:-1])

    # The long stream: its tokens so far, then an error event and [DONE], not a cut body.
    status, text = await long
    elapsed = time.monotonic() - t0
    assert status == 200
    events = _events(text)
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])
    assert err["error"]["code"] == "sidecar_shutting_down", err
    assert err["routing"]["attempts"][0]["error"] == "the sidecar is shutting down"
    assert any('"content"' in e for e in events[:-2])
    assert 1.5 <= elapsed < 4.0, elapsed

    # The request still waiting for its first token: a 503 the app can read and retry.
    status, text = await waiting
    assert status == 503
    body = json.loads(text)
    assert body["error"]["code"] == "sidecar_shutting_down", body
    assert body["routing"]["provider"] is None

    await asyncio.wait_for(stopping, 5.0)
    # The providers' connections are closed: they stop generating (and billing).
    await wait_for(lambda: fake.requests[1].outcome == "client_disconnected", timeout=3)
    # Counted as what the app got, never as 499 (the app did not leave).
    assert sc.metrics.requests.labels("499")._value.get() == 0
    assert sc.metrics.requests.labels("503")._value.get() == 1
    # The router hears of the short stream only: the cut attempts are the sidecar's
    # doing, no evidence about alpha or slow.
    await wait_for(lambda: router.core.outcomes_by_class["none"] == 1, timeout=5)
    assert sum(router.core.outcomes_by_class.values()) == 1


async def test_shutdown_with_nothing_in_flight_does_not_wait_for_the_grace(
    providers: Stack,
) -> None:
    stack = providers
    sc = await stack.start_sidecar("", fallback=True, shutdown_grace_s=30.0)
    status, _ = await _post(
        f"{sc.base_url}/chat/completions",
        {"model": MODEL, "messages": MSGS, "max_tokens": 1, "provider": {"only": ["alpha"]}},
    )
    assert status == 200
    t0 = time.monotonic()
    await sc.stop()
    stack.sidecar = None
    assert time.monotonic() - t0 < 3.0
