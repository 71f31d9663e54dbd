"""A provider's ``usage`` with token counts that are no counts: the answer still arrives.

Found by a black-box audit: ``"completion_tokens": true`` in a non-streaming
answer passed the sidecar's ``isinstance(x, int)`` check and stopped the
outcome report with a TypeError, so an answered request became a 500; negative
and absurd counts (``-7``, ``10**18``) went into ``routing``, ``usage.cost``
and the spend counter. Such counts are now ignored and the cost estimated.
Real router, real sidecar, the ``openai`` client, a real HTTP upstream.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sidecar_helpers import MODEL, Stack, openai_client, raw_upstream, write_raw_catalog

MSGS = [{"role": "user", "content": "hi"}]


def _usage_upstream(usage: Any):
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        base = {"id": "x", "created": 1, "model": "up"}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "Hello"}
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {**base, "object": "chat.completion.chunk"}
        for content, finish in (("Hel", None), ("lo", "stop")):
            choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
            await resp.write(
                b"data: " + json.dumps({**chunk, "choices": [choice]}).encode() + b"\n\n"
            )
        last = {**chunk, "choices": [], "usage": usage}
        await resp.write(b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n")
        return resp

    return chat


BAD_USAGES = [
    {"prompt_tokens": True, "completion_tokens": True, "total_tokens": True},
    {"prompt_tokens": -5, "completion_tokens": -7, "total_tokens": -12},
    {"prompt_tokens": 10**18, "completion_tokens": 10**18, "total_tokens": 2 * 10**18},
    {"prompt_tokens": "5", "completion_tokens": 2.5},
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("usage", BAD_USAGES, ids=["bool", "negative", "absurd", "not-int"])
async def test_usage_counts_that_are_no_counts_are_ignored(
    stack: Stack, tmp_path: Path, usage: dict[str, Any], stream: bool
) -> None:
    async with raw_upstream(_usage_upstream(usage)) as url:
        stack.catalog_path = write_raw_catalog(tmp_path / "catalog.yaml", {"alpha": url})
        router = await stack.start_router()
        sc = await stack.start_sidecar(router.grpc_address)
        client = openai_client(sc)
        if stream:
            text, routing = "", None
            async for chunk in await client.chat.completions.create(
                model=MODEL,
                messages=MSGS,
                stream=True,
                stream_options={"include_usage": True},
            ):
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                routing = (chunk.model_extra or {}).get("routing", routing)
        else:
            answer = await client.chat.completions.create(model=MODEL, messages=MSGS)
            text, routing = answer.choices[0].message.content, answer.model_extra["routing"]
        async with (
            aiohttp.ClientSession() as s,
            s.get(sc.base_url.removesuffix("/v1") + "/metrics") as r,
        ):
            metrics = await r.text()
    assert text == "Hello" and routing is not None
    attempt = routing["attempts"][0]
    assert attempt["status"] == "ok" and "input_tokens" not in attempt
    assert attempt.get("output_tokens", 0) in (0, 2)  # chunks counted, or none (JSON)
    assert routing["cost_usd"]["estimated"] is True
    assert 0 <= routing["cost_usd"]["total"] < 1e-3
    spend = [ln for ln in metrics.splitlines() if ln.startswith("router_sidecar_spend_usd_total")]
    assert all(float(ln.rsplit(" ", 1)[1]) < 1e-3 for ln in spend)
