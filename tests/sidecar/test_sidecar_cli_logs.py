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


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_cli_event_loop_serves_through_the_router(stack: Stack, loop: str) -> None:
    """Both ``--event-loop`` choices run the whole path: ranking over gRPC, a stream,
    and the outcome reported back (uvloop is the default: no flag for it)."""
    import grpc

    from router_common.pb import router_pb2, router_pb2_grpc

    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    router = await stack.start_router()
    env = {**os.environ, key_env("alpha"): key_value("alpha")}
    flags = [] if loop == "uvloop" else ["--event-loop", "asyncio"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar.cli",
        "--router",
        router.grpc_address,
        "--listen",
        "127.0.0.1:0",
        "--outcome-flush-interval-s",
        "0.05",
        *flags,
        env=env,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        started = await _read_until(proc.stderr, "sidecar started", lines)
        assert started["event_loop"] == loop
        client = openai.AsyncOpenAI(base_url=started["listen"], api_key="x", max_retries=0)
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True
        )
        routing = None
        async for chunk in stream:
            routing = (chunk.model_extra or {}).get("routing", routing)
        assert routing is not None and routing["source"] == "router"
        assert routing["provider"] == "alpha"

        async def attempts() -> int:
            async with grpc.aio.insecure_channel(router.grpc_address) as ch:
                resp = await router_pb2_grpc.RouterStub(ch).GetModelEndpoints(
                    router_pb2.GetModelEndpointsRequest(model=MODEL), timeout=2
                )
            return sum(e.uptime_last_1h.attempts for e in resp.endpoints)

        async with asyncio.timeout(5):
            while await attempts() < 1:  # the outcome reached the router over gRPC
                await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await proc.stderr.read()
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_cli_refuses_an_unknown_event_loop() -> None:
    from sidecar.config import settings_from_args

    expected = "bad --event-loop 'tokio': expected one of uvloop, asyncio"
    with pytest.raises(SystemExit, match=expected):
        settings_from_args(["--event-loop", "tokio"], environ={})
