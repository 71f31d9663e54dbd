"""The real ``router-sidecar`` process: flags and env, JSON logs without secrets, clean SIGTERM."""

from __future__ import annotations

import os
import signal

import openai
import pytest
from sidecar_helpers import MODEL, Stack, key_env, key_value, sidecar_process

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
