"""``router-sidecar`` as a process, under the signals an operator sends.

Found by a fault audit: SIGHUP (which the router answers by reloading its
catalog, so operators send it to both) killed the sidecar on the spot, exit
129, every stream cut and not a log line. And SIGTERM with a stream in flight
cut the stream's body (see test_sidecar_shutdown.py for the in-process detail);
here the real process: the stream ends with an error event and [DONE], the
process exits 0, and stderr is JSON lines only, without a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import aiohttp
from sidecar_helpers import MODEL, Stack, key_env, key_value, sidecar_process


async def test_sighup_is_ignored_and_sigterm_ends_a_stream_readably(stack: Stack) -> None:
    await stack.add_providers({"alpha": {"tokens_per_second": 20.0}})
    catalog = stack.write_catalog()
    env = {
        **os.environ,
        key_env("alpha"): key_value("alpha"),
        "SIDECAR_FALLBACK_CATALOG": str(catalog),
        "SIDECAR_SHUTDOWN_GRACE_S": "0.5",
    }
    async with sidecar_process(env) as sidecar:
        started = await sidecar.read_until("sidecar started")
        url = started["listen"] + "/chat/completions"
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}

        sidecar.proc.send_signal(signal.SIGHUP)
        await sidecar.read_until("SIGHUP ignored")
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json=body) as resp:
                assert resp.status == 200  # still serving
            # A 20 s stream, in flight when SIGTERM arrives.
            async with session.post(url, json={**body, "max_tokens": 400, "stream": True}) as resp:
                assert resp.status == 200
                await resp.content.readuntil(b"\n\n")  # its first chunk
                sidecar.proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(10):
                    text = (await resp.read()).decode()  # a cut body would raise here
        events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "sidecar_shutting_down"
        assert await sidecar.exit_code() == 0
    assert "Traceback" not in sidecar.log
    assert any(
        r.get("message") == "shutdown grace over, ending in-flight requests with an error"
        for r in sidecar.records()  # every line is JSON
    )
