"""A provider that writes SSE in one of the forms the spec allows but OpenAI does not use.

Real router, real sidecar, the official ``openai`` client, and a real HTTP
upstream writing exactly the given bytes: lines ended by CR alone or CRLF, a
UTF-8 byte order mark before the first event, and one event in several
``data:`` lines (the spec joins them with a newline). Found by a black-box
audit: a CR-only stream was taken for one endless line (the provider was failed
over as if it had sent nothing), the BOM made the first line junk (its token
never reached the app), and the lines of a split event were relayed one by one,
so the ``openai`` client raised ``JSONDecodeError`` mid-stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sidecar_helpers import (
    Stack,
    over_hostile_alpha,
    sse_chunk,
    stream_alpha_then_beta,
)

MSGS = [{"role": "user", "content": "hi"}]


def _chunk(content: str | None = None, finish: str | None = None) -> bytes:
    return sse_chunk({} if content is None else {"content": content}, finish, usage=None)


HELLO = [_chunk("Hel"), _chunk("lo"), _chunk(None, "stop") + b"data: [DONE]\n\n"]


def _scripted(writes: Sequence[bytes], pace_s: float = 0.02):
    """A chat handler answering with ``writes``, one write each, ``pace_s`` apart (the
    provider's pacing, so each is a read of its own)."""

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, blob in enumerate(writes):
            if i:
                await asyncio.sleep(pace_s)
            await resp.write(blob)
        await resp.write_eof()
        return resp

    return chat


async def _stream(sc) -> tuple[str, dict, str]:
    """Text, routing and serving provider of one streamed request (alpha first)."""
    text, routing, headers = await stream_alpha_then_beta(sc, max_tokens=8, messages=MSGS)
    assert routing is not None
    return text, routing, headers["x-router-provider"]


async def _alpha_failed_over(stack: Stack, tmp_path: Path, chat: Any) -> str:
    """Stream with ``chat`` as alpha: beta serves, alpha's attempt is a stream_abort;
    its error text."""
    async with over_hostile_alpha(stack, tmp_path, chat) as sc:
        text, routing, provider = await _stream(sc)
    assert provider == "beta" and text
    first = routing["attempts"][0]
    assert (first["provider"], first["error_class"]) == ("alpha", "stream_abort")
    error: str = first["error"]
    return error


def _cr(blobs: Sequence[bytes]) -> list[bytes]:
    return [b.replace(b"\n", b"\r") for b in blobs]


def _crlf(blobs: Sequence[bytes]) -> list[bytes]:
    return [b.replace(b"\n", b"\r\n") for b in blobs]


SPLIT_EVENT = (
    b'data: {"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,\n'
    b'data: "model":"up-alpha","choices":[{"index":0,"delta":{"content":"Hel"},'
    b'"finish_reason":null}]}\n\n'
)


@pytest.mark.parametrize(
    "writes",
    [
        _cr(HELLO),
        _crlf(HELLO),
        [b"".join(_cr(HELLO))],  # the whole stream in one read
        # a CRLF cut between its CR and LF by the reads
        [_crlf(HELLO)[0][:-1], b"\n" + _crlf(HELLO)[1][:-1], b"\n" + _crlf(HELLO)[2]],
        [b"\xef\xbb\xbf" + HELLO[0], *HELLO[1:]],
        [b"\xef\xbb\xbf", *HELLO],  # the BOM in a read of its own
        [SPLIT_EVENT, *HELLO[1:]],
        [SPLIT_EVENT[:80], SPLIT_EVENT[80:], *HELLO[1:]],  # the event's lines in two reads
        [_chunk("", None) + SPLIT_EVENT.replace(b"Hel", b"He") + _chunk("l"), *HELLO[1:]],
    ],
    ids=[
        "cr",
        "crlf",
        "cr-one-read",
        "crlf-cut",
        "bom",
        "bom-own-read",
        "multi-line-event",
        "multi-line-event-in-two-reads",
        "multi-line-event-among-others",
    ],
)
async def test_every_line_form_the_spec_allows_reaches_the_app_whole(
    stack: Stack, tmp_path: Path, writes: list[bytes]
) -> None:
    async with over_hostile_alpha(stack, tmp_path, _scripted(writes)) as sc:
        text, routing, provider = await _stream(sc)
    assert (provider, text) == ("alpha", "Hello")
    attempt = routing["attempts"][-1]
    assert attempt["status"] == "ok" and attempt["output_tokens"] >= 2
    assert stack.counts()["beta"] == 0


async def test_cr_only_lines_keep_a_slow_stream_alive(stack: Stack, tmp_path: Path) -> None:
    """Each CR-ended line is a chunk for ``--chunk-timeout-s``, also one the app never
    sees (an ``event:`` line): a stream whose lines come well within it, but which
    lasts longer, is not cut."""
    writes = _cr([_chunk("Hel"), *[b"event: ping\n\n"] * 5, *HELLO[1:]])
    async with over_hostile_alpha(
        stack, tmp_path, _scripted(writes, pace_s=0.25), chunk_timeout_s=0.8
    ) as sc:
        text, routing, provider = await _stream(sc)
    assert (provider, text) == ("alpha", "Hello")
    assert routing["attempts"][-1]["status"] == "ok"


async def test_a_json_answer_to_a_stream_request_fails_over_saying_so(
    stack: Stack, tmp_path: Path
) -> None:
    """A provider that ignores ``stream: true`` and answers 200 with a whole JSON
    completion: the next provider serves, and the attempt's error says what happened
    (it read "stream ended before the first token", as if the stream had broken)."""

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {
                "id": "chatcmpl-x",
                "object": "chat.completion",
                "created": 1,
                "model": "up-alpha",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hello"},
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    assert await _alpha_failed_over(stack, tmp_path, chat) == (
        "upstream answered with a JSON body, not an event stream (stream: true ignored)"
    )


async def test_a_stream_that_says_done_without_an_answer_fails_over(
    stack: Stack, tmp_path: Path
) -> None:
    """A role chunk and ``[DONE]``, no token and no finish_reason: nothing was
    generated and nothing says why, so the next provider serves (it was relayed to
    the app as an empty answer and counted a success)."""
    role = sse_chunk({"role": "assistant"}, None, usage=None)
    assert await _alpha_failed_over(stack, tmp_path, _scripted([role + b"data: [DONE]\n\n"])) == (
        "stream ended with [DONE] before its first token and without a finish_reason"
    )


async def test_an_empty_answer_with_a_finish_reason_is_served(stack: Stack, tmp_path: Path) -> None:
    """An empty answer the model chose (a finish_reason, no content) is an answer:
    relayed, not failed over."""
    writes = [_chunk("", None), _chunk(None, "stop") + b"data: [DONE]\n\n"]
    async with over_hostile_alpha(stack, tmp_path, _scripted(writes)) as sc:
        text, routing, provider = await _stream(sc)
    assert (provider, text) == ("alpha", "")
    assert routing["attempts"][-1]["status"] == "ok"
