"""Wire forms of what replicas put in Redis: outcome batches and checkpoints.

JSON (orjson) rather than pickle: Redis is shared infrastructure, and a
checkpoint someone else could write must never run code when a replica reads
it. Anything malformed raises ``CodecError``; the caller counts and skips it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import orjson

from router_common.domain import EndpointKey, ErrorClass
from router_service.model import Outcome
from router_service.sketches.windows import BucketExport

#: Bumped when the layout changes; a replica ignores checkpoints of another version.
CHECKPOINT_VERSION = 1

_ERROR_CLASSES = {e.value: e for e in ErrorClass}


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
