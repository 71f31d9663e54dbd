"""A whole answer in one read is scanned as it would be event by event (issue 13h).

The one-read shape (role and first token, a run of plain deltas, a finish, a usage
chunk, [DONE]) takes shortcuts: the run's end is guessed from the last finish
(searched backwards) and checked, its content chunks are counted only when asked,
and the model rewrite counts its replacements by the length they added. Each
shape here leaves one shortcut's guess wrong or its check failing, and what the
app gets and what is measured must be what the line-by-line scan gives.
"""

from __future__ import annotations

import pytest

from sidecar.redaction import KeyRedactor
from sidecar.streaming import SSEScanner

KEY = "sk-test-0123456789abcdefghijklmnop"


def _chunk(delta: str, finish: str = "null", usage: str = "null", model: str = '"up"') -> bytes:
    return (
        b'data: {"id":"c","object":"chat.completion.chunk","model":' + model.encode() + b","
        b'"choices":[{"index":0,"delta":' + delta.encode() + b","
        b'"finish_reason":' + finish.encode() + b'}],"usage":' + usage.encode() + b"}\n\n"
    )


def _text(i: int) -> str:
    return '{"content":" w' + str(i) + '"}'


_RUN = b"".join(_chunk(_text(i)) for i in range(1, 12))
_FINISH = _chunk("{}", finish='"stop"')
_USAGE = b'data: {"id":"c","model":"up","choices":[],"usage":{"completion_tokens":12}}\n\n'
_DONE = b"data: [DONE]\n\n"
_FIRST = _chunk('{"role":"assistant","content":"w0"}')

SHAPES = {
    "role and token, run, finish, usage": _FIRST + _RUN + _FINISH + _USAGE + _DONE,
    "no usage chunk: the count is the output": _FIRST + _RUN + _FINISH + _DONE,
    "no finish: the backward guess finds none": _FIRST + _RUN + _USAGE + _DONE,
    "two finishes: the guess's run holds one": _FIRST + _RUN + _FINISH + _RUN + _FINISH + _DONE,
    "usage object mid-run": _FIRST + _RUN + _USAGE + _RUN + _FINISH + _DONE,
    "an error event mid-run": _FIRST + _RUN + b'data: {"error":{"message":"boom"}}\n\n' + _RUN,
    "empty and null contents in the run": _FIRST
    + _chunk('{"content":""}')
    + _RUN
    + _chunk('{"content":null}')
    + _FINISH
    + _USAGE
    + _DONE,
    "[DONE] spelled in a token": _FIRST + _chunk('{"content":"[DONE]"}') + _RUN + _FINISH + _DONE,
    "a spaced model member: the count of replacements disagrees": _FIRST
    + _RUN
    + _chunk(_text(99), model=' "up"')
    + _FINISH
    + _USAGE
    + _DONE,
    "the key echoed in a token": _FIRST
    + _chunk('{"content":"' + KEY + '"}')
    + _RUN
    + _FINISH
    + _DONE,
}


def _scanner(model: str) -> SSEScanner:
    return SSEScanner(model, True, KeyRedactor([KEY]).only(KEY))


@pytest.mark.parametrize("model", ["app/model", "ap"])  # "ap": as long as "up"
@pytest.mark.parametrize("shape", SHAPES)
def test_a_whole_answer_in_one_read_is_what_the_events_one_by_one_give(
    shape: str, model: str
) -> None:
    block = SHAPES[shape]
    whole = _scanner(model)
    out_whole = whole.feed(block, 1.0)
    whole.first_read_done()
    by_event = _scanner(model)
    events = [e + b"\n\n" for e in block.split(b"\n\n")[:-1]]
    out_events = b"".join(by_event.feed(event, 1.0) for event in events)
    assert out_whole == out_events
    assert b'"up"' not in out_whole and KEY.encode() not in out_whole
    for name in ("done", "finish_seen", "error", "usage_tokens", "first_token_at", "last_id"):
        assert getattr(whole, name) == getattr(by_event, name), name
    assert whole.content_chunks == by_event.content_chunks
    assert whole.output_tokens == by_event.output_tokens
    assert whole.final_chunks({"p": 1}) == by_event.final_chunks({"p": 1})
    # What came in the read that held the first token shows no generation.
    assert whole.generation_seen is False


def test_the_count_of_a_run_is_kept_across_reads_and_shows_later_generation() -> None:
    sc = _scanner("app/model")
    sc.feed(_FIRST + _RUN, 1.0)  # the first token and a run, not the end
    sc.first_read_done()
    assert sc.content_chunks == 12 and sc.generation_seen is False
    sc.feed(_RUN, 2.0)  # a later read: a run counted in bulk
    sc.feed(_RUN, 3.0)  # another: the one before is counted as this one is held
    assert sc.generation_seen is True
    sc.feed(_FINISH + _DONE, 4.0)
    assert sc.done and sc.content_chunks == sc.output_tokens == 34
