"""A provider that sends no ``usage`` at all: the app still gets usage and a full cost.

Found by a black-box audit of the sidecar's metadata: a stream that asked for
``stream_options.include_usage`` got no usage chunk when the provider ignored
the option (``chunk.usage`` was None on every chunk, ``routing`` rode on the
finish chunk), and a non-streaming answer without ``usage`` was costed as
zero output tokens (``routing.cost_usd.output`` 0, no ``output_tokens`` on the
attempt, ``usage`` None in the body, so ``answer.usage.cost`` raised). Now the
sidecar's own counts stand in: the input estimate (characters / 4), the
content chunks counted (a non-streaming answer: its text's characters / 4),
flagged ``estimated``. Real router, real sidecar, the ``openai`` client, a
real HTTP upstream.
"""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web
from sidecar_helpers import MODEL, Stack, openai_client, raw_upstream, write_raw_catalog

MSGS = [{"role": "user", "content": "a prompt of forty characters, give or ta"}]
ANSWER = "An answer of exactly thirty-two."  # 32 characters: 8 tokens at chars / 4
PIECES = ("An answer", " of exactly", " thirty-two.")  # three content chunks


async def _no_usage(request: web.Request) -> web.StreamResponse:
    """An OpenAI-compatible upstream that never sends ``usage``, whatever it is asked."""
    body = await request.json()
    base = {"id": "chatcmpl-x", "created": 1, "model": "up"}
    if not body.get("stream"):
        message = {"role": "assistant", "content": ANSWER}
        return web.json_response(
            {
                **base,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            }
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    chunk = {**base, "object": "chat.completion.chunk"}
    for i, piece in enumerate(PIECES):
        finish = "stop" if i == len(PIECES) - 1 else None
        choice = {"index": 0, "delta": {"content": piece}, "finish_reason": finish}
        await resp.write(b"data: " + json.dumps({**chunk, "choices": [choice]}).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def _start(stack: Stack, tmp_path: Path, url: str):
    # alpha costs $1 / $1 per million tokens (write_raw_catalog: the first is cheapest).
    stack.catalog_path = write_raw_catalog(tmp_path / "catalog.yaml", {"alpha": url})
    router = await stack.start_router()
    return openai_client(await stack.start_sidecar(router.grpc_address))


async def test_a_stream_that_asked_for_usage_gets_a_usage_chunk_with_the_cost(
    stack: Stack, tmp_path: Path
) -> None:
    async with raw_upstream(_no_usage) as url:
        client = await _start(stack, tmp_path, url)
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model=MODEL, messages=MSGS, stream=True, stream_options={"include_usage": True}
            )
        ]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    last = chunks[-1]
    # OpenAI's promise for include_usage: a last chunk with no choices and the usage.
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (10, 3)
    assert last.usage.total_tokens == 13
    routing = last.model_extra["routing"]
    assert last.model == MODEL
    assert routing["cost_usd"] == {
        "total": 1.3e-05,
        "input": 1e-05,
        "output": 3e-06,
        "estimated": True,
    }
    assert last.usage.model_extra["cost"] == routing["cost_usd"]["total"]
    # routing rides on the last chunk only.
    assert all("routing" not in (c.model_extra or {}) for c in chunks[:-1])


async def test_a_stream_that_did_not_ask_for_usage_gets_none(stack: Stack, tmp_path: Path) -> None:
    async with raw_upstream(_no_usage) as url:
        client = await _start(stack, tmp_path, url)
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model=MODEL, messages=MSGS, stream=True
            )
        ]
    assert all(c.choices for c in chunks)  # chunk.choices[0] works on every chunk
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model_extra["routing"]["cost_usd"]["output"] == 3e-06


async def test_a_json_answer_without_usage_is_costed_from_its_text(
    stack: Stack, tmp_path: Path
) -> None:
    async with raw_upstream(_no_usage) as url:
        client = await _start(stack, tmp_path, url)
        answer = await client.chat.completions.create(model=MODEL, messages=MSGS)
    routing = answer.model_extra["routing"]
    assert answer.choices[0].message.content == ANSWER
    attempt = routing["attempts"][0]
    assert attempt["output_tokens"] == 8 and "input_tokens" not in attempt
    assert routing["cost_usd"] == {
        "total": 1.8e-05,
        "input": 1e-05,
        "output": 8e-06,
        "estimated": True,
    }
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (10, 8)
    assert answer.usage.total_tokens == 18
    assert answer.usage.model_extra["cost"] == routing["cost_usd"]["total"] == attempt["cost_usd"]
