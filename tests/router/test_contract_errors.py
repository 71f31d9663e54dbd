"""A contract other languages can read: hostile inputs, and what every error says.

Each hostile request goes over a real gRPC channel to a loopback router. Every
error must start with the proto path of the field it is about and print
values as JSON would (router_common.json_text), never as Python does
(``nan``, ``['groq']``, ``-1.0``, ``'x'``, ``True``, ``None``).
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import grpc
import pytest

from router_common.json_text import as_json
from router_common.limits import MAX_MODEL_ID_LEN, MAX_NAME_LEN, MAX_TOKENS
from router_common.pb import router_pb2
from router_common.routing import reasons
from tests.router.pb_builders import outcome as grpc_server_outcome

MODEL = "zai/glm-4.7"  # served by cerebras, together, fireworks, ... (not groq)
PROTO = Path(__file__).resolve().parents[2] / "proto" / "router" / "v1" / "router.proto"

#: What Python prints and JSON never does: repr quotes, list reprs, nan/inf,
#: floats with a useless ".0", Python's constants.
PYTHON_REPR = re.compile(
    r"'[^']*'|\[\s*'|\bnan\b|\binf\b|(?<![\w.])-?\d+\.0(?![\d])|\bTrue\b|\bFalse\b|\bNone\b"
)


def assert_json_values(text: str) -> None:
    assert not PYTHON_REPR.search(text), f"a Python repr in {text!r}"


def prefs(**fields) -> router_pb2.RankProvidersRequest:
    request = router_pb2.RankProvidersRequest(model=MODEL)
    for name, value in fields.items():
        if name in ("estimated_input_tokens", "max_output_tokens"):
            setattr(request, name, value)
        elif name in ("input_per_million", "output_per_million"):
            setattr(request.preferences.max_price, name, value)
        elif isinstance(value, list):
            getattr(request.preferences, name).extend(value)
        else:
            setattr(request.preferences, name, value)
    return request


# (request fields, proto path the message must start with, JSON text it must contain)
HOSTILE_RANKINGS = [
    ({"input_per_million": math.nan}, "preferences.max_price.input_per_million", '"NaN"'),
    ({"output_per_million": -1.0}, "preferences.max_price.output_per_million", "got -1"),
    ({"preferred_max_ttft_ms": math.inf}, "preferences.preferred_max_ttft_ms", '"Infinity"'),
    ({"preferred_min_tps": -0.5}, "preferences.preferred_min_tps", "got -0.5"),
    ({"estimated_input_tokens": -1}, "estimated_input_tokens", "got -1"),
    ({"max_output_tokens": MAX_TOKENS + 1}, "max_output_tokens", str(MAX_TOKENS + 1)),
    ({"order": ["cerebras", "cerebras"]}, "preferences.order", '"cerebras"'),
    ({"order": ["cerebras"], "ignore": ["cerebras"]}, "preferences.order", '["cerebras"]'),
    ({"only": ["together"], "ignore": ["together"]}, "preferences.ignore", '["together"]'),
    ({"order": ["together"], "only": ["cerebras"]}, "preferences.order", '["together"]'),
    ({"order": ["x" * (MAX_NAME_LEN + 1)]}, "preferences.order", '"xxxx'),
    ({"only": [""]}, "preferences.only", 'got ""'),
    ({"order": ["no-such-provider"]}, "preferences.order", '"no-such-provider"'),
    ({"only": ["cerebras", "nope"]}, "preferences.only", '"nope"'),
    ({"ignore": ["ghost"]}, "preferences.ignore", '"ghost"'),
    ({"sort": 99}, "preferences.sort", "99"),
    ({"percentile": 42}, "preferences.percentile", "42"),
]


@pytest.mark.parametrize(("fields", "path", "shown"), HOSTILE_RANKINGS)
async def test_a_bad_ranking_request_names_its_proto_path_and_prints_json(
    router_stub, fields: dict, path: str, shown: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router_stub.RankProviders(prefs(**fields))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details()
    assert details.startswith(f"{path}: "), details
    assert shown in details, details
    assert_json_values(details)


async def test_a_provider_of_another_model_is_not_an_error(router_stub) -> None:
    # groq is in the catalog but does not serve this model: it is filtered, not refused.
    response = await router_stub.RankProviders(prefs(ignore=["groq"], order=["cerebras"]))
    assert response.endpoints[0].provider.name == "cerebras"


async def test_nothing_left_names_the_model_and_endpoints_as_json(router_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router_stub.RankProviders(prefs(input_per_million=0.0, output_per_million=0.0))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = err.value.details()
    assert f"no endpoint of {as_json(MODEL)}" in details
    assert f'"cerebras | {MODEL}": input_price_above_max' in details
    assert_json_values(details)


async def test_an_unknown_model_is_quoted_as_json(router_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router_stub.RankProviders(router_pb2.RankProvidersRequest(model="it's/x"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == 'model "it\'s/x" is not in the catalog'


@pytest.mark.parametrize("length", [0, MAX_MODEL_ID_LEN + 1])
async def test_a_model_outside_its_limit_is_invalid_not_unknown(router_stub, length: int) -> None:
    # The proto's `Limit: 1..256 characters` on RankProvidersRequest.model is a
    # bad argument, as Outcome.model's is; NOT_FOUND is for a plausible id.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router_stub.RankProviders(router_pb2.RankProvidersRequest(model="m" * length))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (f"model: must be 1..{MAX_MODEL_ID_LEN} characters, got {length}")


def outcome(**fields) -> router_pb2.Outcome:
    """A valid outcome for cerebras on MODEL, with ``fields`` changed."""
    return grpc_server_outcome(fields.pop("provider", "cerebras"), **fields)


# (outcome fields, the Outcome field the rejection names, JSON text it must contain)
HOSTILE_OUTCOMES = [
    ({"ttft_ms": math.nan}, "ttft_ms", '"NaN"'),
    ({"ttft_ms": -1.0}, "ttft_ms", "got -1"),
    ({"tokens_per_second": math.inf}, "tokens_per_second", '"Infinity"'),
    ({"duration_ms": -math.inf}, "duration_ms", '"-Infinity"'),
    ({"output_tokens": -5}, "output_tokens", "got -5"),
    # An int64 is shown exactly (proto3 JSON writes it as a string of its digits),
    # not rounded through a double: 2**63 - 1, not 9223372036854776000.
    ({"output_tokens": 2**63 - 1}, "output_tokens", "got 9223372036854775807"),
    ({"retry_after_seconds": 1e9}, "retry_after_seconds", "1000000000"),
    ({"provider": "groq"}, "provider", f'"groq | {MODEL}"'),
    ({"provider": "ghost"}, "provider", f'"ghost | {MODEL}"'),
    ({"model": "made/up"}, "model", '"made/up"'),
    ({"model": "m" * (MAX_MODEL_ID_LEN + 1)}, "model", str(MAX_MODEL_ID_LEN + 1)),
    ({"provider": "p" * (MAX_NAME_LEN + 1)}, "provider", str(MAX_NAME_LEN + 1)),
    ({"started_at": 1.0}, "started_at", "got 1"),
    ({"started_at": time.time() + 3_600}, "started_at", "60 s ahead"),
    ({"error_class": 99}, "error_class", "99"),
    ({"success": False}, "error_class", '"ERROR_CLASS_NONE" contradicts success false'),
    ({"http_status": 500}, "http_status", "500 contradicts success true"),
    ({"http_status": 429}, "http_status", "429 contradicts success true"),
    ({"http_status": 700}, "http_status", "700"),
    (
        {"success": True, "error_class": router_pb2.ERROR_CLASS_TIMEOUT},
        "error_class",
        '"ERROR_CLASS_TIMEOUT" contradicts success true',
    ),
]

OUTCOME_FIELDS = {f.name for f in router_pb2.Outcome.DESCRIPTOR.fields}


async def test_every_bad_outcome_is_rejected_naming_its_field_in_json(
    router_app, router_stub
) -> None:
    keys_before = router_app.core.store.keys()
    outcomes = [outcome(**fields) for fields, _, _ in HOSTILE_OUTCOMES]
    ack = await router_stub.RecordOutcome(router_pb2.RecordOutcomeRequest(outcomes=outcomes))
    assert (ack.accepted, ack.rejected) == (0, len(HOSTILE_OUTCOMES))
    reasons_by_index = {r.index: r.reason for r in ack.rejections}
    for index, (_, field, shown) in enumerate(HOSTILE_OUTCOMES):
        reason = reasons_by_index[index]
        assert reason.split(": ", 1)[0] == field, reason
        assert field in OUTCOME_FIELDS
        assert shown in reason, reason
        assert_json_values(reason)
    assert router_app.core.store.keys() == keys_before  # and nothing was stored


async def test_a_failure_with_a_2xx_status_is_accepted(router_stub) -> None:
    # A stream that broke after its 200 is a failure with status 200: no contradiction.
    ack = await router_stub.RecordOutcome(
        router_pb2.RecordOutcomeRequest(
            outcomes=[outcome(success=False, error_class=router_pb2.ERROR_CLASS_STREAM_ABORT)]
        )
    )
    assert (ack.accepted, ack.rejected) == (1, 0)


async def test_a_bad_batch_id_names_its_path(router_stub) -> None:
    request = router_pb2.RecordOutcomeRequest(outcomes=[outcome()])
    request.batch_id.sender = "s" * (MAX_NAME_LEN + 1)
    request.batch_id.sequence = 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router_stub.RecordOutcome(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("batch_id.sender: ")
    assert_json_values(err.value.details())


@pytest.mark.parametrize(
    ("tokens", "basis"),
    [
        ((1_000, 500), router_pb2.COST_BASIS_PER_REQUEST),
        ((0, 0), router_pb2.COST_BASIS_BLENDED_PER_MILLION_TOKENS),
    ],
)
async def test_the_cost_says_what_it_is_on_the_wire(router_stub, tokens, basis) -> None:
    request = prefs(sort=router_pb2.SORT_BY_COST)
    request.estimated_input_tokens, request.max_output_tokens = tokens
    response = await router_stub.RankProviders(request)
    assert {e.cost_basis for e in response.endpoints} == {basis}
    first = response.endpoints[0]
    if basis == router_pb2.COST_BASIS_PER_REQUEST:
        expected = (
            1_000 * first.input_price_per_million + 500 * first.output_price_per_million
        ) / 1e6
    else:
        expected = (first.input_price_per_million + 3 * first.output_price_per_million) / 4
    assert first.estimated_cost_usd == pytest.approx(expected)


def _comment_above(text: str, line_start: str) -> str:
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip().startswith(line_start))
    block = []
    for line in reversed(lines[:index]):
        if not line.strip().startswith("//"):
            break
        block.append(line.strip()[2:].strip())
    return " ".join(reversed(block))


def test_the_proto_lists_every_reason_code_and_strategy() -> None:
    from router_service.ranking import result

    text = PROTO.read_text()
    codes = {v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str)}
    strategies = {v for k, v in vars(result).items() if k.startswith("STRATEGY_")}
    assert len(codes) >= 14 and len(strategies) == 5  # guards the discovery itself
    code_comment = _comment_above(text, "string code = 1;")
    strategy_comment = _comment_above(text, "string strategy = 1;")
    for code in codes:
        assert f"`{code}`" in code_comment, f"reason code {code} is not listed in the proto"
    for strategy in strategies:
        assert f"`{strategy}`" in strategy_comment, f"strategy {strategy} is not in the proto"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (math.nan, '"NaN"'),
        (math.inf, '"Infinity"'),
        (-math.inf, '"-Infinity"'),
        (-1.0, "-1"),
        (0.5, "0.5"),
        (1e-7, "1e-7"),
        (1e300, "1e+300"),
        # JavaScript's Number::toString: plain decimals from 1e-6 up to 1e21, the
        # shortest digits padded with zeros (not the exact binary value) below 1e21.
        (-1e-6, "-0.000001"),
        (1.234e-6, "0.000001234"),
        (1.5e-7, "1.5e-7"),
        (123456789012345680000.0, "123456789012345680000"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1.5e21, "1.5e+21"),
        (-0.0, "0"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (0.1 + 0.2, "0.30000000000000004"),
        (-12345678.9, "-12345678.9"),
        (7, "7"),
        (True, "true"),
        (None, "null"),
        ("it's", '"it\'s"'),
        (["groq", "x"], '["groq", "x"]'),
        ("a" * 100, '"' + "a" * 64 + '"… (100 characters)'),
    ],
)
def test_values_are_written_as_json(value: object, text: str) -> None:
    assert as_json(value) == text


async def test_batch_ids_behave_as_the_proto_says(router_stub) -> None:
    # BatchId's comment: ids at or below a forgotten one are duplicates; an id below
    # the remembered ones but above every forgotten one is new (a late first delivery).
    def batch(sender: str, sequence: int) -> router_pb2.RecordOutcomeRequest:
        request = router_pb2.RecordOutcomeRequest(outcomes=[outcome()])
        request.batch_id.sender, request.batch_id.sequence = sender, sequence
        return request

    late = await router_stub.RecordOutcome(batch("late", 10))
    assert (late.accepted, late.duplicate_batches) == (1, 0)
    late = await router_stub.RecordOutcome(batch("late", 3))
    assert (late.accepted, late.duplicate_batches) == (1, 0)
    # OutcomeAck.applied_sequences: the first 100 batches of a call.
    ack = await router_stub.StreamOutcomes(iter([batch("many", s) for s in range(1, 102)]))
    assert (ack.accepted, ack.duplicate_batches) == (101, 0)
    assert list(ack.applied_sequences) == list(range(1, 101))
    again = await router_stub.RecordOutcome(batch("many", 101))
    assert (again.accepted, again.duplicate_batches) == (0, 1)
    # 1024 more ids push 1..101 out of memory; at or below the highest forgotten: duplicates.
    flood = [router_pb2.RecordOutcomeRequest() for _ in range(1_024)]
    for sequence, request in enumerate(flood, start=1_000):
        request.batch_id.sender, request.batch_id.sequence = "many", sequence
    await router_stub.StreamOutcomes(iter(flood))
    for sequence in (1, 101):
        forgotten = await router_stub.RecordOutcome(batch("many", sequence))
        assert (forgotten.accepted, forgotten.duplicate_batches) == (0, 1), sequence


async def test_a_rejection_index_counts_the_outcomes_of_duplicate_batches(router_stub) -> None:
    # RejectedOutcome.index is "the position of the outcome in the call (across the
    # whole stream)": a sender maps it back to what it sent, so the outcomes of a
    # batch acknowledged as a duplicate still take their positions.
    def batch(sequence: int, *outcomes: router_pb2.Outcome) -> router_pb2.RecordOutcomeRequest:
        request = router_pb2.RecordOutcomeRequest(outcomes=outcomes)
        request.batch_id.sender, request.batch_id.sequence = "index-sender", sequence
        return request

    first = batch(1, outcome(), outcome())
    await router_stub.RecordOutcome(first)
    bad = outcome(ttft_ms=math.nan)
    ack = await router_stub.StreamOutcomes(iter([first, batch(2, outcome(), bad)]))
    assert (ack.accepted, ack.rejected, ack.duplicate_batches) == (1, 1, 1)
    assert [(r.index, r.reason.split(":")[0]) for r in ack.rejections] == [(3, "ttft_ms")]
