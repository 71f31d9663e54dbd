"""The sidecar's stream response sends its headers with the first token, in one write."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from sidecar.proxy import _OneWriteStreamResponse


async def test_headers_leave_with_the_first_body_bytes() -> None:
    writes: list[bytes] = []
    seen: dict[str, int] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        original_write, original_writelines = transport.write, transport.writelines
        transport.write = lambda data: (writes.append(bytes(data)), original_write(data))[1]
        transport.writelines = lambda parts: (
            writes.append(b"".join(bytes(p) for p in parts)),
            original_writelines(parts),
        )[1]
        response = _OneWriteStreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        seen["after_prepare"] = len(writes)
        await response.write(b'data: {"first":"token"}\n\n')
        seen["after_first_write"] = len(writes)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/") as r,
        ):
            assert (await r.read()).startswith(b"data: ")
    finally:
        await runner.cleanup()
    assert seen == {"after_prepare": 0, "after_first_write": 1}
    assert writes[0].startswith(b"HTTP/1.1 200") and b'data: {"first":"token"}' in writes[0]
