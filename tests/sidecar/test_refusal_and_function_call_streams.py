"""Answers that are not ``content``: a refusal and a legacy ``function_call`` stream.

OpenAI streams a structured-output refusal as ``delta.refusal`` and a call of the
older ``functions`` API as ``delta.function_call`` (``content`` null in both). Found
by a black-box audit with the OpenAI Node SDK: the sidecar saw no first token in
either, so it held the whole answer back, left ``ttft_ms`` out, and cut an answer
still streaming at the first-token timeout and sent the request to the next
provider. Real router, real sidecar, the official ``openai`` client, and a real
HTTP upstream writing the chunks.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sidecar_helpers import MODEL, Stack, openai_client, over_hostile_alpha, sse_chunk

from sidecar.streaming import SSEScanner

#: The first-token timeout the sidecar runs with; the answers take three times as long.
TIMEOUT_S = 0.3


REFUSAL = [{"refusal": word} for word in ("I ", "can't ", "help ", "with ", "that.")]
FUNCTION_CALL = [{"function_call": {"name": "get_weather", "arguments": ""}}] + [
    {"function_call": {"arguments": part}} for part in ('{"ci', 'ty":', '"Pa', 'ris"', "}")
]


def _slow_answer(deltas: list[dict[str, Any]], finish: str):
    """A provider that answers with ``deltas``, paced over 3 x TIMEOUT_S."""

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse_chunk({"role": "assistant", "content": None}))
        for delta in deltas:
            await resp.write(sse_chunk(delta))
            await asyncio.sleep(3 * TIMEOUT_S / len(deltas))  # the provider's pace
        await resp.write(sse_chunk({}, finish) + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    return chat


@pytest.mark.parametrize(
    ("deltas", "finish", "field"),
    [(REFUSAL, "stop", "refusal"), (FUNCTION_CALL, "function_call", "function_call")],
    ids=["refusal", "function_call"],
)
async def test_a_slow_answer_without_content_is_streamed_not_cut(
    stack: Stack, tmp_path: Path, deltas: list[dict[str, Any]], finish: str, field: str
) -> None:
    handler = _slow_answer(deltas, finish)
    async with over_hostile_alpha(stack, tmp_path, handler, first_byte_timeout_s=TIMEOUT_S) as sc:
        stream = await openai_client(sc).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_body={"provider": {"order": ["alpha", "beta"]}},
        )
        got: list[Any] = []
        routing = None
        async for chunk in stream:
            if chunk.choices:
                value = getattr(chunk.choices[0].delta, field, None)
                if isinstance(value, str):
                    got.append(value)
                elif value is not None:
                    got.append(value.model_dump(exclude_none=True))
            routing = (chunk.model_extra or {}).get("routing", routing)
    assert stack.counts()["beta"] == 0
    assert routing is not None and routing["provider"] == "alpha"
    [attempt] = routing["attempts"]
    assert attempt["status"] == "ok" and attempt["ttft_ms"] < 1000 * TIMEOUT_S
    assert got == [d[field] for d in deltas]


@pytest.mark.parametrize(
    "delta",
    [
        b'{"refusal":"No."}',
        b'{"content":null,"refusal":"No."}',
        b'{"function_call":{"name":"f","arguments":""}}',
    ],
)
def test_a_refusal_or_function_call_is_a_first_token(delta: bytes) -> None:
    scanner = SSEScanner()
    chunk = b'{"id":"c","choices":[{"index":0,"delta":' + delta + b',"finish_reason":null}]}'
    scanner.feed(b"data: " + chunk + b"\n\n", 5.0)
    assert scanner.first_token_at == 5.0 and scanner.output_tokens == 1


def test_openais_opening_chunk_with_a_null_refusal_is_no_token() -> None:
    scanner = SSEScanner()
    chunk = (
        b'{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":"",'
        b'"refusal":null},"finish_reason":null}]}'
    )
    scanner.feed(b"data: " + chunk + b"\n\n", 5.0)
    assert scanner.first_token_at is None and scanner.output_tokens == 0
