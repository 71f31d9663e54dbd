"""Providers that misbehave below HTTP: what the app sees, and what the router hears.

Real router, real sidecar, a real upstream on loopback that writes exactly the
bytes it is told to. Found by a black-box fault audit: a provider that sent its
first token and then trickled the bytes of the next line (one byte at a time,
never a newline) held the app's stream open for as long as it liked, because
every read, not every line, restarted ``--chunk-timeout-s``; nothing reached
the app meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from sidecar_helpers import MODEL, Stack, over_hostile_alpha, wait_for

MSGS = [{"role": "user", "content": "hi"}]

FIRST = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"up-alpha",'
    b'"choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}\n\n'
)


async def _events(url: str, body: dict[str, object], within_s: float) -> list[str]:
    """The ``data:`` payloads of one streamed answer, read to its end within ``within_s``."""
    async with (
        aiohttp.ClientSession() as session,
        asyncio.timeout(within_s),
        session.post(url, json=body) as resp,
    ):
        assert resp.status == 200
        text = (await resp.read()).decode()
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


async def test_a_provider_trickling_one_line_after_the_first_token_hits_the_chunk_timeout(
    stack: Stack, tmp_path: Path
) -> None:
    stop = asyncio.Event()

    async def trickle(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(FIRST)
        # One byte every 50 ms of a line that never ends: never silent for the
        # 0.5 s chunk timeout at the byte level, but no chunk for the app, ever.
        try:
            for _ in range(600):  # 30 s, far past the test's bound
                if stop.is_set():
                    break
                await asyncio.sleep(0.05)
                await resp.write(b"d")
        except (ConnectionError, aiohttp.ClientError):
            pass  # the sidecar gave up on it and closed the connection
        return resp

    async with over_hostile_alpha(stack, tmp_path, trickle, chunk_timeout_s=0.5) as sidecar:
        try:
            t0 = time.monotonic()
            events = await _events(
                f"{sidecar.base_url}/chat/completions",
                {
                    "model": MODEL,
                    "messages": MSGS,
                    "stream": True,
                    "max_tokens": 4,
                    "provider": {"order": ["alpha", "beta"]},
                },
                within_s=8.0,
            )
            elapsed = time.monotonic() - t0
        finally:
            stop.set()
    assert elapsed < 5.0, elapsed
    # The first token, then the sidecar's own error event, then [DONE]: never the
    # next provider's answer appended after the first one's token.
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "Hello"
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])
    assert err["error"]["code"] == "timeout", err
    attempts = err["routing"]["attempts"]
    assert [a["provider"] for a in attempts] == ["alpha"]
    assert "no chunk for 0.5s" in attempts[0]["error"]
    assert stack.counts()["beta"] == 0  # no fallback after the first token
    # The router hears a timeout (the provider's doing), and only that.
    router = stack.router
    assert router is not None
    await wait_for(lambda: router.core.outcomes_by_class["timeout"] == 1, timeout=5)
    assert sum(router.core.outcomes_by_class.values()) == 1
