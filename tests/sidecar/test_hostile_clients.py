"""Hostile or broken apps on the sidecar's port: idle keep-alives, headers sent a byte
at a time, bodies that never finish, and a process started with a low file limit.

Found by a black-box audit: aiohttp's server keeps an idle keep-alive (or a request
head still arriving) for 3630 s and reads a body with no time limit, so a few
thousand such clients pinned the sidecar's descriptors (whose soft limit, unlike the
router's, was never raised) and handlers for an hour or more.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

from sidecar_helpers import MODEL, Stack, sidecar_process, trickle_until_closed

#: A short bound so the tests are quick; the default is 15 s.
IDLE_S = 0.5
#: How long a test waits before calling the sidecar unbounded (far above IDLE_S).
DEADLINE_S = 10.0


async def _sidecar(stack: Stack) -> tuple[str, int]:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    sidecar = await stack.start_sidecar(fallback=True, client_idle_timeout_s=IDLE_S)
    return "127.0.0.1", sidecar.port


async def _closed_by_peer(reader: asyncio.StreamReader) -> bytes:
    """Everything the sidecar sends until it closes the connection (bounded wait)."""
    async with asyncio.timeout(DEADLINE_S):
        return await reader.read()


async def test_an_idle_keep_alive_connection_is_closed(stack: Stack) -> None:
    host, port = await _sidecar(stack)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
        assert head.startswith(b"HTTP/1.1 200 ")
        # The body, then EOF once the connection has been idle IDLE_S (aiohttp's
        # default kept it 3630 s, so this waited out DEADLINE_S and failed).
        rest = await _closed_by_peer(reader)
        assert rest.startswith(b"{"), rest
    finally:
        writer.close()


async def test_headers_sent_a_byte_at_a_time_do_not_hold_the_connection(stack: Stack) -> None:
    host, port = await _sidecar(stack)
    reader, writer = await asyncio.open_connection(host, port)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 4000
    closed = asyncio.create_task(_closed_by_peer(reader))
    try:
        await trickle_until_closed(writer, request, closed, DEADLINE_S)
    finally:
        closed.cancel()
        writer.close()


async def test_a_body_that_never_finishes_is_a_408_naming_the_bound(stack: Stack) -> None:
    host, port = await _sidecar(stack)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body) + 100}\r\n\r\n".encode()
            + body.encode()
        )
        async with asyncio.timeout(DEADLINE_S):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 "), head
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            payload = await reader.readexactly(length)
        error = json.loads(payload)["error"]
        assert error["code"] == "body_timeout" and f"{IDLE_S} s" in error["message"], error
    finally:
        writer.close()


async def test_the_408_closes_the_connection_so_a_retry_is_not_read_as_the_old_body(
    stack: Stack,
) -> None:
    """Found by a black-box fault audit: the 408 said nothing of the connection, so a
    keep-alive client (an SDK retrying the 408) sent its next request on it; its bytes
    were read as the rest of the unfinished body and it got aiohttp's plain-text 400
    "Invalid method encountered". The 408 now says ``Connection: close``."""
    host, port = await _sidecar(stack)
    reader, writer = await asyncio.open_connection(host, port)
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    head_of = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n"
    )
    try:
        writer.write(head_of % (len(body) + 50) + body.encode())  # 50 bytes never come
        async with asyncio.timeout(DEADLINE_S):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), head
        assert b"\r\nconnection: close\r\n" in head.lower(), head
    finally:
        writer.close()


async def test_the_sidecar_raises_its_soft_file_limit_to_the_hard_one(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}})
    catalog = stack.write_catalog()
    env = {**os.environ, "SIDECAR_FALLBACK_CATALOG": str(catalog)}
    async with sidecar_process(env, soft_nofile=256) as sidecar:
        limit = await sidecar.read_until("file descriptor limit")
        await sidecar.read_until("sidecar started")
        assert limit["soft_before"] == 256 and limit["soft"] == limit["hard"] > 256, limit
        with open(f"/proc/{sidecar.proc.pid}/limits") as f:
            row = next(line for line in f if line.startswith("Max open files")).split()
        assert int(row[3]) == limit["hard"], row
        sidecar.proc.send_signal(signal.SIGTERM)
        assert await sidecar.exit_code() == 0
