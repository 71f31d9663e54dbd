"""A provider whose stream is not clean SSE: the app still gets OpenAI's shape, or a clean error.

Real router, real sidecar, the official ``openai`` client, and a real HTTP
upstream that writes exactly the bytes each test gives it: a data line that is
not JSON, a bare number, ``event:``/``id:`` lines (an event without data makes
the ``openai`` client call ``json.loads("")``), junk, and a line that never
ends. Found by a black-box audit: such lines used to be relayed verbatim and
the client raised ``JSONDecodeError`` in the middle of a stream, and a line
without a newline was buffered without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import openai
import pytest
from aiohttp import web
from sidecar_helpers import MODEL, Stack, openai_client, over_hostile_alpha, sse_chunk

MSGS = [{"role": "user", "content": "hi"}]


def _chunk(content: str | None = None, finish: str | None = None, role: bool = False) -> bytes:
    delta: dict[str, str] = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    return sse_chunk(delta, finish, id="chatcmpl-hostile", usage=None)


#: Lines no OpenAI client can read: not JSON, not an object, events without data, junk.
JUNK = (
    b"data: {not json\n\n"
    b"data: 42\n\n"
    b"event: ping\n\n"
    b"id: 7\n\n"
    b"retry: 100\n\n"
    b"garbage without a field name\n\n"
)
USAGE = (
    b'data: {"id":"chatcmpl-hostile","object":"chat.completion.chunk","created":1,'
    b'"model":"up-alpha","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,'
    b'"total_tokens":5}}\n\n'
)


def _scripted(writes: Callable[[], Sequence[bytes]]):
    """A chat handler answering with ``writes()``, one write each (paced: separate reads)."""

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, blob in enumerate(writes()):
            if i:
                await asyncio.sleep(0.02)  # the provider's pacing: separate reads
            await resp.write(blob)
        await resp.write_eof()
        return resp

    return chat


async def _stream(sc) -> tuple[str, dict | None, list[str | None], str]:
    """Text, routing, finish reasons and serving provider of one streamed request."""
    raw = await openai_client(sc).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MSGS,
        max_tokens=8,
        stream=True,
        extra_body={"provider": {"order": ["alpha", "beta"]}},
    )
    text, routing, finishes = "", None, []
    async for chunk in raw.parse():
        assert chunk.choices, "a chunk without choices reached an app that did not ask for usage"
        text += chunk.choices[0].delta.content or ""
        finishes.append(chunk.choices[0].finish_reason)
        routing = (chunk.model_extra or {}).get("routing", routing)
    return text, routing, finishes, raw.headers["x-router-provider"]


@pytest.mark.parametrize(
    "writes",
    [
        # junk before the first token, in the read that carries it
        lambda: [_chunk("", role=True) + JUNK + _chunk("Hel"), _chunk("lo"), _chunk("", "stop")],
        # junk after the first token, among ordinary deltas read as one block
        lambda: [
            _chunk("", role=True) + _chunk("Hel"),
            _chunk("l") + JUNK + _chunk("o") + _chunk("", "stop") + USAGE + b"data: [DONE]\n\n",
        ],
        # only events without data among ordinary deltas (no bad JSON to notice)
        lambda: [
            _chunk("", role=True) + _chunk("Hel"),
            _chunk("l") + b"id: 7\n\nevent: ping\n\n" + _chunk("o") + _chunk("", "stop"),
        ],
        # junk in reads of its own, between tokens
        lambda: [_chunk("Hel"), JUNK, _chunk("lo"), JUNK, _chunk("", "stop"), USAGE],
    ],
    ids=["before-first-token", "in-a-block", "dataless-events-in-a-block", "own-reads"],
)
async def test_lines_no_openai_client_can_read_are_not_relayed(
    stack: Stack, tmp_path: Path, writes: Callable[[], Sequence[bytes]]
) -> None:
    async with over_hostile_alpha(stack, tmp_path, _scripted(writes)) as sc:
        text, routing, finishes, provider = await _stream(sc)
    assert provider == "alpha" and text == "Hello"
    assert finishes[-1] == "stop"
    assert routing is not None and routing["attempts"][-1]["status"] == "ok"
    assert stack.counts()["beta"] == 0


async def test_a_line_that_never_ends_before_the_first_token_fails_over(
    stack: Stack, tmp_path: Path
) -> None:
    endless = [_chunk("", role=True)] + [b"x" * 4096] * 8  # 32 KiB, never a newline
    async with over_hostile_alpha(
        stack, tmp_path, _scripted(lambda: endless), max_upstream_response_bytes=16 * 1024
    ) as sc:
        text, routing, _, provider = await _stream(sc)
    assert provider == "beta" and text
    assert routing is not None
    first = routing["attempts"][0]
    assert first["provider"] == "alpha" and first["error_class"] == "server_error"
    assert first["error"] == "upstream sent an SSE line longer than 16384 bytes"


async def test_endless_comments_before_the_first_token_are_not_held_without_bound(
    stack: Stack, tmp_path: Path
) -> None:
    """Found by a black-box fault audit: comments (keep-alives) and blank lines before
    the first token were held without bound, each line short: a provider sending 800 MB
    of them took the sidecar to 4.6 GB. Past ``--max-upstream-response-bytes`` held,
    the attempt fails like a line too long, and the next provider answers."""
    comments = [_chunk("", role=True)] + [(b": keep-alive " + b"x" * 1000 + b"\n") * 16] * 8
    async with over_hostile_alpha(
        stack,
        tmp_path,
        _scripted(lambda: [*comments, _chunk("Hel")]),
        max_upstream_response_bytes=64 * 1024,
    ) as sc:
        text, routing, _, provider = await _stream(sc)
    assert provider == "beta" and text
    assert routing is not None
    first = routing["attempts"][0]
    assert first["provider"] == "alpha" and first["error_class"] == "server_error"
    assert first["error"] == "upstream sent over 65536 bytes before its first token"


async def test_a_line_that_never_ends_after_the_first_token_ends_the_stream_with_an_error(
    stack: Stack, tmp_path: Path
) -> None:
    endless = [_chunk("", role=True) + _chunk("Hel")] + [b"x" * 4096] * 8
    async with over_hostile_alpha(
        stack, tmp_path, _scripted(lambda: endless), max_upstream_response_bytes=16 * 1024
    ) as sc:
        with pytest.raises(openai.APIError, match="SSE line longer than 16384 bytes"):
            await _stream(sc)
    assert stack.counts()["beta"] == 0  # no silent retry after the first token
