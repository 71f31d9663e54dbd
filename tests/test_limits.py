"""The proto's comments state every limit next to its field, with the value the code enforces.

Callers in other languages read the contract, not ``router_common/limits.py``;
if a bound changes in one place and not the other, this fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from router_common import limits as L

PROTO = Path(__file__).resolve().parent.parent / "proto" / "router" / "v1" / "router.proto"

#: (message, field) -> the limits its comment must state.
STATED: dict[tuple[str, str], tuple[float, ...]] = {
    ("RoutingPreferences", "order"): (L.MAX_PROVIDER_LIST, L.MAX_NAME_LEN),
    ("RoutingPreferences", "only"): (L.MAX_PROVIDER_LIST, L.MAX_NAME_LEN),
    ("RoutingPreferences", "ignore"): (L.MAX_PROVIDER_LIST, L.MAX_NAME_LEN),
    ("RankProvidersRequest", "model"): (L.MAX_MODEL_ID_LEN,),
    ("RankProvidersRequest", "estimated_input_tokens"): (L.MAX_TOKENS,),
    ("RankProvidersRequest", "max_output_tokens"): (L.MAX_TOKENS,),
    ("Outcome", "model"): (L.MAX_MODEL_ID_LEN,),
    ("Outcome", "provider"): (L.MAX_NAME_LEN,),
    ("Outcome", "started_at"): (L.MAX_OUTCOME_AGE_S, L.MAX_FUTURE_SKEW_S),
    ("Outcome", "http_status"): (100, 599, 200, 299),
    ("MaxPrice", "input_per_million"): (0,),
    ("MaxPrice", "output_per_million"): (0,),
    ("RoutingPreferences", "preferred_max_ttft_ms"): (0,),
    ("RoutingPreferences", "preferred_min_tps"): (0,),
    ("Outcome", "ttft_ms"): (L.MAX_TTFT_MS,),
    ("Outcome", "tokens_per_second"): (L.MAX_TOKENS_PER_SECOND,),
    ("Outcome", "output_tokens"): (L.MAX_OUTPUT_TOKENS,),
    ("Outcome", "duration_ms"): (L.MAX_DURATION_MS,),
    ("Outcome", "retry_after_seconds"): (L.MAX_RETRY_AFTER_S,),
    ("RecordOutcomeRequest", "outcomes"): (L.MAX_OUTCOMES_PER_BATCH,),
    ("OutcomeAck", "rejections"): (L.MAX_REJECTIONS_REPORTED,),
    ("BatchId", "sender"): (L.MAX_SENDER_LEN,),
    ("BatchId", "sequence"): (1,),
    ("RankedEndpoint", "first_token_timeout_ms"): (L.MAX_FIRST_TOKEN_TIMEOUT_MS,),
    ("RankedEndpoint", "hedge_after_ms"): (L.MAX_FIRST_TOKEN_TIMEOUT_MS,),
}


def field_comments(text: str) -> dict[tuple[str, str], str]:
    """The comment block right above each field, by (message, field)."""
    out: dict[tuple[str, str], str] = {}
    message = ""
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if m := re.match(r"message (\w+) \{", stripped):
            message, comment = m.group(1), []
        elif stripped.startswith("//"):
            comment.append(stripped[2:].strip())
        elif m := re.match(r"(?:repeated |optional )?[\w.<>, ]+ (\w+) = \d+;", stripped):
            out[(message, m.group(1))] = " ".join(comment)
            comment = []
        else:
            comment = []
    return out


COMMENTS = field_comments(PROTO.read_text())


@pytest.mark.parametrize(("where", "values"), sorted(STATED.items()))
def test_the_proto_states_the_enforced_limit(where: tuple[str, str], values: tuple[float, ...]):
    comment = COMMENTS.get(where)
    assert comment is not None, f"no field {where[0]}.{where[1]} in the proto"
    assert "Limit:" in comment, f"{where[0]}.{where[1]} states no limit: {comment!r}"
    for value in values:
        number = str(int(value))
        assert re.search(rf"(?<!\d){number}(?![\d])", comment), (
            f"{where[0]}.{where[1]}: the comment does not say {number}: {comment!r}"
        )


def test_the_parser_sees_every_message_field() -> None:
    # A guard for the test itself: a regex that matched nothing would pass vacuously.
    assert len(COMMENTS) > 60 and ("GetHealthRequest", "model") in COMMENTS


def test_the_proto_states_the_batch_id_memory() -> None:
    text = " ".join(w for w in PROTO.read_text().split() if w != "//")
    assert f"the last {L.BATCH_IDS_REMEMBERED} ids" in text
    assert f"{L.MAX_SENDERS_PER_CALLER} most recent senders" in text
