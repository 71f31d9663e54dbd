"""An answer that came whole with its first token: its bytes leave before its tail (issue 13).

At 32 unpaced streams the upstream answers arrive together, each whole in one read. The
sidecar sends each answer's bytes as soon as they are scanned, then yields once before
building its tail (cost, ``routing``) and doing its bookkeeping, so every stream of the
batch gets its first token before any of them builds a tail (bench/README.md 13i).
Real router, real sidecar, real upstreams on loopback; the spies below record and pass
every call on to the real method.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sidecar_helpers import MODEL, Stack, over_hostile_alpha, sse_chunk, wait_for

from sidecar.lean_server import LeanConnection

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _answer(word: str) -> bytes:
    """A whole streamed answer as one provider write: token, more, finish, usage, [DONE]."""
    usage = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    return b"".join(
        (
            sse_chunk({"role": "assistant", "content": word}),
            sse_chunk({"content": " and"}),
            sse_chunk({"content": " more"}),
            sse_chunk({}, "stop"),
            sse_chunk({}, choices=[], usage=usage),
            b"data: [DONE]\n\n",
        )
    )


def _spy_on_sends(monkeypatch: pytest.MonkeyPatch, events: list[tuple[str, bytes]]) -> None:
    """Every send to an app's connection, in order, into ``events``."""
    send = LeanConnection.send

    async def spy(self: LeanConnection, data: bytes) -> None:
        events.append(("send", bytes(data)))
        await send(self, data)

    monkeypatch.setattr(LeanConnection, "send", spy)


async def _stream(url: str) -> bytes:
    async with aiohttp.ClientSession() as s, s.post(url + "/chat/completions", json=BODY) as r:
        assert r.status == 200
        return await r.read()


def _routing(body: bytes) -> dict[str, Any]:
    events = [json.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")]
    return events[-1]["routing"]


async def test_answers_arriving_together_all_leave_before_any_builds_its_tail(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held: list[web.StreamResponse] = []
    both_in = asyncio.Event()

    async def upstream(request: web.Request) -> web.StreamResponse:
        """Headers at once; both answers written in one step once both requests are in,
        so the sidecar reads them in the same turn of its event loop."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        held.append(resp)
        if len(held) < 2:
            await both_in.wait()
            return resp
        for i, r in enumerate(held):
            await r.write(_answer(f"word{i}"))
            await r.write_eof()
        both_in.set()
        return resp

    events: list[tuple[str, bytes]] = []
    async with over_hostile_alpha(stack, tmp_path, upstream) as sc:
        _spy_on_sends(monkeypatch, events)
        assert sc.proxy is not None
        routing_object = sc.proxy.routing_object

        def spy_routing(*args: Any, **kw: Any) -> dict[str, Any]:
            events.append(("routing", b""))
            return routing_object(*args, **kw)

        monkeypatch.setattr(sc.proxy, "routing_object", spy_routing)
        bodies = await asyncio.gather(_stream(sc.base_url), _stream(sc.base_url))
    # Both answers' bytes (each with its token, neither with routing) went out before
    # either stream built its routing object; each tail (routing, [DONE]) came after.
    kinds = [kind for kind, _ in events]
    assert kinds == ["send", "send", "routing", "send", "routing", "send"], kinds
    firsts = [data for kind, data in events[:2]]
    assert sorted(b"word0" in d for d in firsts) == [False, True]
    assert all(b'"content":"word' in d and b"routing" not in d for d in firsts)
    tails = [data for kind, data in events if kind == "send"][2:]
    assert all(b'"routing"' in d and d.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n") for d in tails)
    # What each app read is the whole answer, as before: tokens, routing, [DONE], once.
    words = set()
    for body in bodies:
        assert body.count(b"data: [DONE]") == 1 and body.endswith(b"data: [DONE]\n\n")
        assert b"and more" not in body and b'" and"' in body and b'" more"' in body
        routing = _routing(body)
        assert routing["provider"] == "alpha" and routing["attempts"][0]["status"] == "ok"
        words |= {w for w in (b"word0", b"word1") if w in body}
    assert words == {b"word0", b"word1"}


async def _one_whole_answer(stack: Stack) -> Any:
    """A router and a sidecar over a fake provider whose whole answer comes in one write."""
    await stack.add_providers(
        {"alpha": {"tokens_per_second": 0.0, "stream_in_one_write": True, "ttft_median_ms": 1.0}}
    )
    stack.write_catalog()
    router = await stack.start_router()
    sc = await stack.start_sidecar(router.grpc_address)
    return router, sc


async def test_an_app_leaving_after_its_first_bytes_is_a_499_and_the_answer_is_reported(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    router, sc = await _one_whole_answer(stack)
    send = LeanConnection.send
    sent: list[bytes] = []

    async def leave_after_the_first_send(self: LeanConnection, data: bytes) -> None:
        await send(self, data)
        sent.append(bytes(data))
        if len(sent) == 1 and self.transport is not None:
            self.transport.abort()  # the app is gone before the tail: its task is cancelled

    monkeypatch.setattr(LeanConnection, "send", leave_after_the_first_send)
    with pytest.raises(aiohttp.ClientError):
        await _stream(sc.base_url)
    assert len(sent) == 1 and b'"content":"' in sent[0] and b"routing" not in sent[0]
    await wait_for(lambda: sc.metrics.requests.labels("499")._value.get() == 1, timeout=3)
    assert sc.metrics.requests.labels("200")._value.get() == 0
    assert sc.metrics.requests.labels("500")._value.get() == 0
    logged = [r for r in caplog.records if r.name == "sidecar" and r.getMessage() == "request"]
    assert [(r.status, r.provider) for r in logged] == [(499, "alpha")]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # The provider answered in full: an ok outcome, the answer costed, no cooldown.
    await wait_for(lambda: router.core.outcomes_by_class["none"] == 1, timeout=5)
    assert sum(router.core.outcomes_by_class.values()) == 1
    assert sc.metrics.spend.labels(MODEL, "alpha")._value.get() > 0
    assert sc.ranking.cooldowns.cooling(MODEL, "alpha") is False


async def test_a_shutdown_cut_after_the_first_bytes_still_sends_the_tail(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, sc = await _one_whole_answer(stack)
    assert sc.proxy is not None
    proxy = sc.proxy
    send = LeanConnection.send
    sent: list[bytes] = []

    async def cut_after_the_first_send(self: LeanConnection, data: bytes) -> None:
        await send(self, data)
        sent.append(bytes(data))
        if len(sent) == 1:  # what the end of the shutdown grace does to an in-flight request
            proxy.shutting_down = True
            task = asyncio.current_task()
            assert task is not None
            task.cancel()

    monkeypatch.setattr(LeanConnection, "send", cut_after_the_first_send)
    body = await _stream(sc.base_url)
    proxy.shutting_down = False
    # The answer was whole: the app gets all of it, routing and [DONE], not an error.
    assert len(sent) == 2 and b'"routing"' in sent[1]
    assert body.endswith(b"data: [DONE]\n\n") and b"sidecar_shutting_down" not in body
    assert _routing(body)["attempts"][0]["status"] == "ok"
