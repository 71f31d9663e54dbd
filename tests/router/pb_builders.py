"""Protobuf messages the router tests send, built one way (a success, a failure, a ranking
request), so a change to the contract is made once here rather than in every test module."""

from __future__ import annotations

import time
from typing import Any

from router_common.pb import router_pb2

MODEL = "zai/glm-4.7"


def _attempt(provider: str, model: str, started_at: float | None) -> dict[str, Any]:
    return {
        "model": model,
        "provider": provider,
        "started_at": time.time() if started_at is None else started_at,
    }


def outcome(
    provider: str, model: str = MODEL, started_at: float | None = None, **fields: Any
) -> router_pb2.Outcome:
    """A successful attempt (300 ms TTFT, 100 tokens/s), ``fields`` overriding any value."""
    base = _attempt(provider, model, started_at) | {
        "success": True,
        "error_class": router_pb2.ERROR_CLASS_NONE,
        "http_status": 200,
        "ttft_ms": 300.0,
        "tokens_per_second": 100.0,
        "output_tokens": 50,
        "duration_ms": 800.0,
    }
    return router_pb2.Outcome(**(base | fields))


def failure(
    provider: str, model: str = MODEL, started_at: float | None = None
) -> router_pb2.Outcome:
    """A 503 from the provider (a server error: it counts against the endpoint's health)."""
    return router_pb2.Outcome(
        **_attempt(provider, model, started_at),
        success=False,
        error_class=router_pb2.ERROR_CLASS_SERVER_ERROR,
        http_status=503,
        duration_ms=20.0,
    )


def timeout(
    provider: str,
    waited_ms: float,
    model: str = MODEL,
    started_at: float | None = None,
    error_class: router_pb2.ErrorClass = router_pb2.ERROR_CLASS_TIMEOUT,
) -> router_pb2.Outcome:
    """A first-token timeout: no token after ``waited_ms`` (a lower bound of its TTFT).

    ``error_class`` CANCELLED: a hedge's loser, given up after the same wait."""
    return router_pb2.Outcome(
        **_attempt(provider, model, started_at),
        success=False,
        error_class=error_class,
        duration_ms=waited_ms,
    )


def rank_request(**prefs: Any) -> router_pb2.RankProvidersRequest:
    """RankProviders for ``MODEL`` (or ``model=``) with ``prefs`` as its preferences."""
    return router_pb2.RankProvidersRequest(
        model=prefs.pop("model", MODEL), preferences=router_pb2.RoutingPreferences(**prefs)
    )
