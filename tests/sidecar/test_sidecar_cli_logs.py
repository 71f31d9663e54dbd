"""The real ``router-sidecar`` process: flags and env, JSON logs without secrets, clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import openai
import pytest
from sidecar_helpers import MODEL, Stack, key_env, key_value

PROMPT = "purple-elephant-prompt-7731 tell me a secret"


async def _read_until(
    stream: asyncio.StreamReader, needle: str, lines: list[str], timeout: float = 10.0
) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError("sidecar exited early:\n" + "".join(lines))
            line = raw.decode()
            lines.append(line)
            if needle in line:
                return json.loads(line)


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
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar.cli",
        "--router",
        "127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
        "--router-retry-s",
        "0.1",
        env=env,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        started = await _read_until(proc.stderr, "sidecar started", lines)
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
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            rest = await proc.stderr.read()
            code = await proc.wait()
        lines.extend(rest.decode().splitlines(keepends=True))
        assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log = "".join(lines)
    records = [json.loads(line) for line in lines if line.strip()]  # every line is JSON
    assert any(r.get("message") == "request" and r.get("status") == 200 for r in records)
    assert PROMPT not in log and "purple-elephant" not in log
    for text in texts:
        assert text not in log
    for name in ("alpha", "beta"):
        assert key_value(name) not in log
        assert "0123456789abcdef-SECRET" not in log
