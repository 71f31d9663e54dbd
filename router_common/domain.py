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
    CANCELLED = "cancelled"

    @property
    def counts_against_endpoint(self) -> bool:
        """A client error (400/422) is the caller's fault and a cancelled attempt (a
        hedge's loser) was given up by the caller, so neither hurts the endpoint."""
        return self is not ErrorClass.NONE and self.is_attempt

    @property
    def is_attempt(self) -> bool:
        """Whether the outcome counts as an attempt of the endpoint, success or failure.

        A client error (the caller's fault) and a cancelled attempt (the caller
        stopped waiting because another attempt answered first) say nothing
        about the endpoint's uptime; a cancelled one's wait still bounds its
        TTFT (``router_service.sketches.store``). The classes are ``NOT_ATTEMPTS``.
        """
        return self not in NOT_ATTEMPTS


#: The error classes that are no attempt of the endpoint (``ErrorClass.is_attempt``):
#: the ingestion loops unpack it into names compared with ``is``.
NOT_ATTEMPTS: tuple[ErrorClass, ErrorClass] = (ErrorClass.CLIENT_ERROR, ErrorClass.CANCELLED)


class Sort(enum.StrEnum):
    """The metric a ``sort`` request ranks by. Values match the Vercel/OpenRouter spelling."""

    COST = "cost"
    TTFT = "ttft"
    TPS = "tps"
