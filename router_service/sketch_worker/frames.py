"""What crosses the socket between the router and its sketch worker, and how.

Frames are a 4-byte big-endian length and a pickle (protocol 5). Pickle,
because both ends are this same code base in the same interpreter and it
writes lists of floats in C; a frame never crosses a trust boundary (the
socket is an unnamed socketpair inherited by the child, nobody else can
reach it).

Outcomes travel as *columns* per endpoint, not as ``Outcome`` tuples:
pickling 512 NamedTuples took ~1.7 µs per outcome of the serving loop (each
is rebuilt by class reference), transposing them and pickling the columns
~0.3 µs. The worker rebuilds
the tuples on its own core. Only the fields the stats store and the
dashboard series read cross (timestamp, success, error class, TTFT,
throughput, duration); ``tests/router/test_sketch_worker.py`` checks that the
rebuilt outcomes give the same stats.
"""

from __future__ import annotations

import pickle
import socket
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

from router_common.domain import EndpointKey, ErrorClass
from router_service.model import Outcome

#: Largest frame either side accepts (a slice of outcomes is ~30 KB, a reply with
#: every point of a 500-endpoint model a few MB): a corrupt length must not make
#: the reader allocate without bound.
MAX_FRAME = 64 << 20

_HEADER = 4

#: One endpoint's outcomes as columns: key, then timestamps, successes, error
#: classes, TTFTs, throughputs and durations, in order.
Columns = tuple[
    EndpointKey,
    Sequence[float],
    Sequence[bool],
    Sequence[ErrorClass],
    Sequence[float | None],
    Sequence[float | None],
    Sequence[float],
]


def columns_of(by_endpoint: Mapping[EndpointKey, list[Outcome]]) -> list[Columns]:
    """Outcomes grouped by endpoint, as columns (cheap to pickle).

    ``zip(*outcomes)`` transposes in C (a list comprehension per field cost
    ~0.9 µs an outcome in all); the error classes cross as enum members,
    which pickle memoises after the first of each."""
    out: list[Columns] = []
    for key, same in by_endpoint.items():
        _, stamps, successes, classes, _, ttfts, tpss, _, durations, _ = zip(*same, strict=True)
        out.append((key, stamps, successes, classes, ttfts, tpss, durations))
    return out


def outcomes_of(columns: list[Columns]) -> dict[EndpointKey, list[Outcome]]:
    """``columns_of`` undone: the outcomes by endpoint, in their order (the fields
    that did not cross keep their defaults; nothing downstream reads them)."""
    out: dict[EndpointKey, list[Outcome]] = {}
    for key, stamps, successes, classes, ttfts, tpss, durations in columns:
        key = EndpointKey(*key)
        n = len(stamps)
        out.setdefault(key, []).extend(
            map(
                Outcome,
                repeat(key, n),
                stamps,
                successes,
                classes,
                repeat(0, n),
                ttfts,
                tpss,
                repeat(0, n),
                durations,
            )
        )
    return out


def frame(message: tuple[Any, ...]) -> list[bytes]:
    """One message as the byte strings to write, header first (no join: no copy)."""
    data = pickle.dumps(message, protocol=5)
    return [len(data).to_bytes(_HEADER, "big"), data]


class FrameError(Exception):
    """The other side sent something that is not a frame: the link is unusable."""


class FrameBuffer:
    """Bytes in, whole messages out: for the worker's blocking socket and the
    router's asyncio reader alike (both feed whatever arrived)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        """Append ``data``; return every message now complete, in order."""
        buffer = self._buffer
        buffer += data
        messages = []
        start = 0
        while len(buffer) - start >= _HEADER:
            size = int.from_bytes(buffer[start : start + _HEADER], "big")
            if size > MAX_FRAME:
                raise FrameError(f"frame of {size} bytes, at most {MAX_FRAME}")
            end = start + _HEADER + size
            if len(buffer) < end:
                break
            messages.append(pickle.loads(buffer[start + _HEADER : end]))
            start = end
        del buffer[:start]
        return messages


def send_blocking(sock: socket.socket, message: tuple[Any, ...]) -> None:
    """Write one message on a blocking socket (the worker's side)."""
    sock.sendall(b"".join(frame(message)))
