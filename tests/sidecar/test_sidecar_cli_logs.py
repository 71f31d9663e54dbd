"""The real ``router-sidecar`` process: flags and env, JSON logs without secrets, clean SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import socket

import aiohttp
import openai
import pytest
from sidecar_helpers import MODEL, Stack, key_env, key_value, sidecar_process, wait_for

PROMPT = "purple-elephant-prompt-7731 tell me a secret"


async def test_cli_serves_logs_json_without_secrets(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.providers["alpha"].add_incident("fail", status=500)
    catalog = stack.write_catalog()
    env = {
        **os.environ,
        key_env("alpha"): key_value("alpha"),
        key_env("beta"): key_value("beta"),
        "SIDECAR_FALLBACK_CATALOG": str(catalog),
        "SIDECAR_LOG_LEVEL": "debug",
    }
    async with sidecar_process(env, "--router-retry-s", "0.1") as sidecar:
        started = await sidecar.read_until("sidecar started")
        assert started["listen"].startswith("http://127.0.0.1:")
        client = openai.AsyncOpenAI(base_url=started["listen"], api_key="x", max_retries=0)
        msgs = [{"role": "user", "content": PROMPT}]
        completion = await client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12)
        texts = [completion.choices[0].message.content]
        stream = await client.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=12, stream=True
        )
        texts.append("".join([c.choices[0].delta.content or "" async for c in stream if c.choices]))
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=0)
        assert all(texts)
        sidecar.proc.send_signal(signal.SIGTERM)
        assert await sidecar.exit_code() == 0
    log = sidecar.log
    records = sidecar.records()  # every line is JSON
    assert any(r.get("message") == "request" and r.get("status") == 200 for r in records)
    assert PROMPT not in log and "purple-elephant" not in log
    for text in texts:
        assert text not in log
    for name in ("alpha", "beta"):
        assert key_value(name) not in log
        assert "0123456789abcdef-SECRET" not in log


async def test_out_of_file_descriptors_is_one_log_line_not_a_flood(stack: Stack) -> None:
    """Found by a black-box fault audit: a sidecar out of file descriptors (its app
    holding connections open) logged every failed accept() at ERROR with a traceback,
    about 750 lines a second. One line per 10 s now, as the router; and it serves
    again once connections close."""
    await stack.add_providers({"alpha": {}})
    catalog = stack.write_catalog()
    env = {
        **os.environ,
        key_env("alpha"): key_value("alpha"),
        "SIDECAR_FALLBACK_CATALOG": str(catalog),
    }
    async with sidecar_process(env, nofile=64) as sidecar:
        started = await sidecar.read_until("sidecar started")
        port = int(started["listen"].removesuffix("/v1").rpartition(":")[2])
        held = []
        try:
            for _ in range(100):  # more than its 64 descriptors (the backlog takes them)
                with contextlib.suppress(OSError):
                    held.append(socket.create_connection(("127.0.0.1", port), timeout=1))
            await sidecar.read_until("accept")
        finally:
            for sock in held:
                sock.close()

        async def serves() -> bool:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s,
                    s.get(started["listen"].removesuffix("/v1") + "/healthz") as r,
                ):
                    return r.status == 200
            return False

        await wait_for(serves, timeout=15)
        sidecar.proc.send_signal(signal.SIGTERM)
        assert await sidecar.exit_code() == 0
    accept_lines = [r for r in sidecar.records() if "accept" in r.get("message", "")]
    assert len(accept_lines) == 1, len(accept_lines)
    assert "Traceback" not in sidecar.log
