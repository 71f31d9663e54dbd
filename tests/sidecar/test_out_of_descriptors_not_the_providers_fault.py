"""A sidecar out of file descriptors does not blame the provider for it.

Found by a black-box fault audit: with the sidecar's descriptors all held (an app
keeping many connections open, a low ``ulimit -n``), every attempt failed as
``connect: Too many open files``, was reported to the router as the provider's
connect failure (health and uptime, fleet-wide) and put the provider in this
sidecar's local cooldown. The attempt now says the shortage is the sidecar's and
is not reported. Real ``router-sidecar`` process, real router, a real upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

from aiohttp import web
from sidecar_helpers import MODEL, Stack, raw_upstream, sidecar_process, wait_for, write_raw_catalog

_BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
).encode()


async def _answer(request: web.Request) -> web.Response:
    """A completion, and the connection closed after it, so every attempt dials anew."""
    await request.read()
    resp = web.json_response(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 1,
            "model": "up",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    )
    resp.force_close()
    return resp


async def _post(app: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> tuple[int, dict]:
    """One chat request on a kept-alive app connection; (status, JSON body)."""
    reader, writer = app
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: sidecar\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(_BODY) + _BODY
    )
    head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
    fields = (line.partition(":") for line in head[1:])
    length = next(int(v) for k, _, v in fields if k.lower() == "content-length")
    return int(head[0].split()[1]), json.loads(await reader.readexactly(length))


async def test_an_attempt_failing_for_want_of_descriptors_is_not_reported(
    stack: Stack, tmp_path: Path
) -> None:
    async with raw_upstream(_answer) as url:
        stack.catalog_path = write_raw_catalog(tmp_path / "catalog.yaml", {"alpha": url})
        router = await stack.start_router()
        env = {**os.environ, "SIDECAR_OUTCOME_FLUSH_INTERVAL_S": "0.05"}
        async with sidecar_process(env, "--router", router.grpc_address, nofile=64) as sidecar:
            started = await sidecar.read_until("sidecar started")
            port = int(started["listen"].removesuffix("/v1").rpartition(":")[2])
            app = await asyncio.open_connection("127.0.0.1", port)
            try:
                assert (await _post(app))[0] == 200
                held = []
                try:
                    for _ in range(100):  # more than its 64 descriptors
                        with contextlib.suppress(OSError, TimeoutError):
                            held.append(
                                await asyncio.wait_for(
                                    asyncio.open_connection("127.0.0.1", port), 1
                                )
                            )
                    await sidecar.read_until("accept")  # none left
                    status, body = await _post(app)
                finally:
                    for _, writer in held:
                        writer.close()
                assert status == 502
                (attempt,) = body["routing"]["attempts"]
                assert attempt["error_class"] == "connect"
                assert "not held against the provider" in attempt["error"], attempt

                async def served() -> bool:  # once it has closed what the app closed
                    return (await _post(app))[0] == 200

                await wait_for(served, timeout=10, interval=0.1)  # and reported
            finally:
                app[1].close()
            # Outcomes arrive in order: once the last success is there, a report of
            # the failed attempt would be too.
            await wait_for(lambda: router.core.outcomes_by_class["none"] >= 2, timeout=10)
            assert router.core.outcomes_by_class["connect"] == 0
