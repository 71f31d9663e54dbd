"""Wire forms of what replicas put in Redis: stream entries and checkpoints.

JSON (orjson) rather than pickle: Redis is shared infrastructure, and a
checkpoint someone else could write must never run code when a replica reads
it. Anything malformed raises ``CodecError``; the caller counts and skips it.

A stream entry (``<prefix>:outcomes``, XADD by ``RedisReplicator``) has the fields

====  =========================================================================
``r``  the writing replica's id (a replica skips its own entries)
``s``  the writer's entry number, 1, 2, ... (a reader drops a number it has seen
       from that writer: a retried pipeline, a republish after a Redis restart)
``o``  outcomes, ``encode_outcomes``: a JSON list of 11-item rows (``[]`` in an
       entry that only carries batch ids)
``b``  optional: ``encode_batch_ids``, a JSON list of ``[caller, sender,
       sequence]`` of outcome batches the writer has applied to the end; a
       reader remembers them in its ``CallerLedger``, so a resend of such a
       batch to it is acknowledged as a duplicate, not applied again
====  =========================================================================

A batch's outcomes are published as they are applied, its id only after the
whole batch was: in a later entry, either the next outcome entry not yet sent
(``b`` beside that entry's ``o``, which may be another batch's outcomes) or an
entry of its own with ``o`` = ``[]``. Both are outcome entries as routers that
predate ``b`` read them (they ignore ``b``; ``[]`` applies nothing).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import orjson

from router_common.domain import EndpointKey, ErrorClass
from router_common.limits import MAX_NAME_LEN, MAX_SENDER_LEN
from router_service.model import Outcome
from router_service.sketches.windows import BucketExport

#: Bumped when the layout changes; a replica ignores checkpoints of another version.
CHECKPOINT_VERSION = 1

_ERROR_CLASSES = {e.value: e for e in ErrorClass}

#: The ``o`` field of a batch-id entry: no outcomes.
NO_OUTCOMES = b"[]"
#: Batch ids one entry may carry: a reader refuses a longer list whole (a
#: writer puts one id per entry; the cap only bounds a corrupt entry's cost).
MAX_BATCH_IDS_PER_ENTRY = 1_000

#: (caller, sender, sequence) of one applied outcome batch.
BatchKey = tuple[str, str, int]


class CodecError(ValueError):
    """Bytes from Redis that are not what this version of the router writes."""


def encode_outcomes(outcomes: Iterable[Outcome]) -> bytes:
    return orjson.dumps(
        [
            [
                o.endpoint.model,
                o.endpoint.provider,
                o.timestamp,
                o.success,
                o.error_class.value,
                o.http_status,
                o.ttft_ms,
                o.tokens_per_second,
                o.output_tokens,
                o.duration_ms,
                o.retry_after_s,
            ]
            for o in outcomes
        ]
    )


def decode_outcomes(data: bytes) -> list[Outcome]:
    try:
        rows = orjson.loads(data)
        return [
            Outcome(
                endpoint=EndpointKey(str(r[0]), str(r[1])),
                timestamp=float(r[2]),
                success=bool(r[3]),
                error_class=_ERROR_CLASSES[r[4]],
                http_status=int(r[5]),
                ttft_ms=None if r[6] is None else float(r[6]),
                tokens_per_second=None if r[7] is None else float(r[7]),
                output_tokens=int(r[8]),
                duration_ms=float(r[9]),
                retry_after_s=None if r[10] is None else float(r[10]),
            )
            for r in rows
        ]
    except (orjson.JSONDecodeError, TypeError, ValueError, KeyError, IndexError) as exc:
        raise CodecError(f"bad outcome batch: {exc}") from None


def encode_batch_ids(ids: Iterable[BatchKey]) -> bytes:
    return orjson.dumps([list(key) for key in ids])


def decode_batch_ids(data: bytes) -> list[BatchKey]:
    """The ids of a ``b`` field; CodecError unless every one is well formed and
    within the bounds the router accepts from a sender (so a corrupt entry
    cannot plant an oversized name in the ledger)."""
    try:
        rows = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"bad batch ids: {exc}") from None
    if not isinstance(rows, list) or len(rows) > MAX_BATCH_IDS_PER_ENTRY:
        raise CodecError(f"bad batch ids: a list of at most {MAX_BATCH_IDS_PER_ENTRY} expected")
    ids = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3):
            raise CodecError("bad batch id: [caller, sender, sequence] expected")
        caller, sender, sequence = row
        if not (isinstance(caller, str) and 1 <= len(caller) <= MAX_NAME_LEN):
            raise CodecError(f"bad batch id: caller must be 1..{MAX_NAME_LEN} characters")
        if not (isinstance(sender, str) and 1 <= len(sender) <= MAX_SENDER_LEN):
            raise CodecError(f"bad batch id: sender must be 1..{MAX_SENDER_LEN} characters")
        if type(sequence) is not int or sequence < 1:
            raise CodecError("bad batch id: sequence must be an integer >= 1")
        ids.append((caller, sender, sequence))
    return ids


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_buckets(buckets: list[BucketExport]) -> list[list[Any]]:
    return [
        [b.ring, b.start, b.width, _b64(b.ttft), _b64(b.tps), b.attempts, b.successes, b.failures]
        for b in buckets
    ]


def decode_buckets(rows: list[list[Any]]) -> list[BucketExport]:
    return [
        BucketExport(
            ring=str(r[0]),
            start=float(r[1]),
            width=float(r[2]),
            ttft=base64.b64decode(r[3]),
            tps=base64.b64decode(r[4]),
            attempts=int(r[5]),
            successes=int(r[6]),
            failures=int(r[7]),
        )
        for r in rows
    ]


def encode_checkpoint(doc: dict[str, Any]) -> bytes:
    return orjson.dumps({"version": CHECKPOINT_VERSION, **doc})


def decode_checkpoint(data: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"bad checkpoint: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != CHECKPOINT_VERSION:
        raise CodecError("checkpoint of another version")
    return doc
