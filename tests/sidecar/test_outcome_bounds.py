"""No outcome the router would reject leaves the sidecar (issue 13).

The bounds live once, in ``router_common.outcome_bounds``: the router rejects
by them and the sidecar fits its reports to them. A response that arrives in
one read has no measurable throughput: the sidecar reports none rather than a
rate the router must refuse.
"""

from __future__ import annotations

import math
from typing import Any

import aiohttp
from hypothesis import given
from hypothesis import strategies as st
from sidecar_helpers import MODEL, Stack, wait_for

from router_common.domain import EndpointKey, ErrorClass
from router_common.outcome_bounds import (
    fit_outcome,
    outcome_value_problem,
    tokens_per_second,
    values_fit,
)
from router_common.pb import router_pb2
from router_service.outcome_validation import Rejection, validate_outcome
from sidecar.streaming import SSEScanner
from sidecar.upstream import AttemptRecord

NOW = 1_800_000_000.0
KEY = EndpointKey("m/x", "a")

_any_float = st.floats(allow_nan=True, allow_infinity=True)


@given(
    ttft=st.none() | _any_float,
    tps=st.none() | _any_float,
    retry=st.none() | _any_float,
    duration=_any_float,
    tokens=st.integers(min_value=0, max_value=2**62),
)
def test_whatever_the_sidecar_measured_the_router_accepts_what_it_sends(
    ttft: float | None, tps: float | None, retry: float | None, duration: float, tokens: int
) -> None:
    rec = AttemptRecord("a", "ax", NOW)
    rec.status, rec.http_status = "ok", 200
    rec.ttft_ms, rec.tokens_per_second, rec.retry_after_s = ttft, tps, retry
    rec.duration_ms, rec.output_tokens = duration, tokens
    raw = router_pb2.Outcome(duration_ms=duration, output_tokens=tokens)
    for name, value in (
        ("ttft_ms", ttft),
        ("tokens_per_second", tps),
        ("retry_after_seconds", retry),
    ):
        if value is not None:
            setattr(raw, name, value)
    # The sidecar's quick check agrees with the router's rule on the raw values.
    assert values_fit(duration, tokens, ttft, tps, retry) == (outcome_value_problem(raw) is None)
    msg = rec.to_outcome("m/x")
    assert outcome_value_problem(msg) is None
    checked = validate_outcome(msg, {KEY}, NOW)
    assert not isinstance(checked, Rejection), checked
    # A value within the bounds is passed on unchanged.
    if ttft is not None and 0 <= ttft <= 600_000:
        assert checked.ttft_ms == ttft
    if tps is not None and 0 <= tps <= 100_000:
        assert checked.tokens_per_second == tps


def test_fitting_drops_non_measurements_and_caps_required_values_and_waits() -> None:
    msg = router_pb2.Outcome(
        model="m/x",
        provider="a",
        started_at=NOW,
        success=False,
        error_class=router_pb2.ERROR_CLASS_RATE_LIMITED,
        http_status=429,
        duration_ms=float("inf"),
        output_tokens=20_000_000,
        ttft_ms=float("nan"),
        tokens_per_second=1e9,
        retry_after_seconds=1e12,
    )
    problem = outcome_value_problem(msg)
    assert problem is not None and problem[0] == "duration_ms"  # the router's first complaint
    fit_outcome(msg)
    assert outcome_value_problem(msg) is None
    assert msg.duration_ms == 3_600_000.0 and msg.output_tokens == 10_000_000
    assert not msg.HasField("ttft_ms") and not msg.HasField("tokens_per_second")
    assert msg.retry_after_seconds == 86_400.0  # "a long wait" keeps its meaning
    assert validate_outcome(msg, {KEY}, NOW).error_class is ErrorClass.RATE_LIMITED  # type: ignore[union-attr]


def test_a_rate_over_a_near_zero_interval_is_no_measurement() -> None:
    assert tokens_per_second(16, 0.0) is None
    assert tokens_per_second(16, 16 / 100_001) is None  # just over the bound
    assert tokens_per_second(16, 0.1) == 160.0
    assert tokens_per_second(0, 1.0) is None


def _chunk(content: str, finish: str = "null", usage: str = "null") -> bytes:
    return (
        b'data: {"id":"c","object":"chat.completion.chunk","model":"up",'
        b'"choices":[{"index":0,"delta":{"content":"' + content.encode() + b'"},'
        b'"finish_reason":' + finish.encode() + b'}],"usage":' + usage.encode() + b"}\n\n"
    )


def _whole_answer(tokens: int) -> bytes:
    return (
        b"".join(_chunk(f"w{i}") for i in range(tokens))
        + _chunk("", finish='"stop"')
        + b'data: {"id":"c","model":"up","choices":[],"usage":{"completion_tokens":%d}}\n\n'
        % tokens
        + b"data: [DONE]\n\n"
    )


def test_an_answer_in_one_read_is_scanned_as_line_by_event_and_shows_no_generation() -> None:
    block = _whole_answer(40)
    whole = SSEScanner("app/model")
    out_whole = whole.feed(block, 1.0)
    whole.first_read_done()
    by_event = SSEScanner("app/model")
    events = [e + b"\n\n" for e in block.split(b"\n\n")[:-1]]
    out_lines = b"".join(by_event.feed(event, 1.0) for event in events)  # one read per event
    # The one-slice path for the run of plain deltas changes nothing the app or
    # the measurements see.
    assert out_whole == out_lines
    assert whole.content_chunks == by_event.content_chunks == 40
    assert whole.done and whole.output_tokens == 40
    assert b'"model":"app/model"' in out_whole and b'"up"' not in out_whole
    assert whole.final_chunks({"p": 1}) == by_event.final_chunks({"p": 1})
    # Nothing arrived after the read that held the first token: no generation seen.
    assert whole.generation_seen is False
    paced = SSEScanner()
    paced.feed(_chunk("first"), 1.0)
    paced.first_read_done()
    assert paced.generation_seen is False
    paced.feed(_chunk("second"), 1.5)
    assert paced.generation_seen is True


async def _stream(sc_url: str, order: list[str], max_tokens: int) -> dict[str, Any]:
    """Stream one completion; the ``routing`` object of its last chunk."""
    import json

    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "stream": True,
        "provider": {"order": order, "allow_fallbacks": False},
    }
    routing: dict[str, Any] = {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(sc_url + "/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200
        async for line in resp.content:
            if line.startswith(b"data: {"):
                routing = json.loads(line[6:]).get("routing", routing)
    return routing


async def test_a_response_arriving_in_one_read_reports_no_throughput_and_nothing_is_rejected(
    stack: Stack,
) -> None:
    # "burst": the whole answer in one write (a cache, or a buffering proxy in front);
    # "paced": 400 tokens/s, whose throughput is measured and reported.
    await stack.add_providers(
        {
            "burst": {"tokens_per_second": 0.0, "stream_in_one_write": True},
            "paced": {"tokens_per_second": 400.0},
        }
    )
    stack.write_catalog()
    router = await stack.start_router()
    received: list[router_pb2.Outcome] = []
    # Every slice of outcomes the router applies goes through its ingestor's recorder.
    recorder = router.servicer.ingestor.recorder
    record = recorder.record

    def spy(messages: Any, first_index: int = 0) -> Any:  # the real router, watched
        batch = list(messages)
        received.extend(batch)
        return record(batch, first_index)

    recorder.record = spy  # type: ignore[method-assign]
    sc = await stack.start_sidecar(router.grpc_address)
    burst = await _stream(sc.base_url, ["burst"], 200)
    paced = await _stream(sc.base_url, ["paced"], 8)
    await wait_for(lambda: len(received) == 2, timeout=5)
    assert router.core.outcomes_rejected == 0
    by_provider = {o.provider: o for o in received}
    one_read = by_provider["burst"]
    assert one_read.success and one_read.output_tokens == 200 and one_read.HasField("ttft_ms")
    assert not one_read.HasField("tokens_per_second")  # nothing measured, nothing claimed
    assert "tokens_per_second" not in burst["attempts"][0]
    measured = by_provider["paced"]
    assert measured.HasField("tokens_per_second")
    assert 50 < measured.tokens_per_second < 5_000  # ~400 tok/s, loose for a busy machine
    assert math.isclose(
        paced["attempts"][0]["tokens_per_second"], measured.tokens_per_second, rel_tol=0.01
    )
