"""The words both processes use: endpoints, error classes, sort metrics, clocks.

Nothing here does I/O or reads a clock; the router's richer domain types
(stats, health views, outcomes) live in ``router_service.model``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import NamedTuple

#: A clock returns Unix time in seconds. Injected everywhere time matters.
Clock = Callable[[], float]


class EndpointKey(NamedTuple):
    """A (model, provider) pair: the unit that is ranked, measured and health-checked.

    A NamedTuple rather than a dataclass because it is a dict key on every hot
    path (ranking, ingestion): tuple hashing and equality run in C, a frozen
    dataclass's run in Python and cost about a quarter of a ranking.
    """

    model: str
    provider: str

    def __str__(self) -> str:
        return f"{self.provider} | {self.model}"


class ErrorClass(enum.StrEnum):
    """Why an upstream attempt failed, as the sidecar classified it."""

    NONE = "none"
    CONNECT = "connect"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    AUTH = "auth"
    CLIENT_ERROR = "client_error"
    STREAM_ABORT = "stream_abort"

    @property
    def counts_against_endpoint(self) -> bool:
        """A client error (400/422) is the caller's fault, so it never hurts the endpoint."""
        return self not in (ErrorClass.NONE, ErrorClass.CLIENT_ERROR)


class Sort(enum.StrEnum):
    """The metric a ``sort`` request ranks by. Values match the Vercel/OpenRouter spelling."""

    COST = "cost"
    TTFT = "ttft"
    TPS = "tps"
