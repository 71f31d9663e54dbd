"""The ranking's answer: the ordered endpoints and the routing metadata explaining it.

Every placement decision carries a ``Reason`` with a machine-readable code, a
human sentence and the numbers behind it, because users of a router want to
see *why* a request landed where it did (Vercel's "routing metadata block").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from router_service.catalog_model import Endpoint
from router_service.model import EndpointKey, HealthState
from router_service.ranking.request import Sort

# Reason codes (stable strings: they reach clients through the proto and JSON).
NOT_IN_ONLY = "not_in_only"
IGNORED = "ignored"
NOT_ZDR = "not_zdr"
INPUT_PRICE_ABOVE_MAX = "input_price_above_max"
OUTPUT_PRICE_ABOVE_MAX = "output_price_above_max"
EJECTED = "ejected"
PROBE_UNAVAILABLE = "probe_unavailable"
FALLBACKS_DISABLED = "fallbacks_disabled"
DEGRADED = "degraded"
PROBING = "probing"
TTFT_ABOVE_PREFERRED = "ttft_above_preferred"
TPS_BELOW_PREFERRED = "tps_below_preferred"
NO_DATA_FOR_SORT = "no_data_for_sort"
EXPLORATION = "exploration"

# Strategies.
STRATEGY_ORDER = "order"
STRATEGY_SORT = "sort"
STRATEGY_ORDER_SORT = "order+sort"
STRATEGY_LOAD_BALANCE = "load_balance"
#: Every candidate was ejected; they are returned least-recently-failed first.
STRATEGY_PANIC = "panic"

# Windows a metric came from.
WINDOW_5M = "5m"
WINDOW_1H = "1h"
WINDOW_NONE = "none"


@dataclass(frozen=True, slots=True)
class Reason:
    """Why an endpoint was excluded, moved down or explored: code, sentence, numbers."""

    code: str
    detail: str
    numbers: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "detail": self.detail, "numbers": dict(self.numbers)}


@dataclass(frozen=True, slots=True)
class Exclusion:
    """An endpoint that will not be tried for this request, and why."""

    endpoint: Endpoint
    reason: Reason


@dataclass(frozen=True, slots=True)
class RankedEndpoint:
    """One endpoint in execution order, with the numbers the decision used.

    ``ttft_ms`` / ``tps`` are at the request's percentile, from ``ttft_window``
    / ``tps_window`` ("5m", "1h" or "none"); ``window`` is the window of the
    metric the ranking used (tps for ``sort=tps``, else ttft). ``cost_usd`` is
    the estimated request cost when the request gave token estimates, else the
    blended price in USD per million tokens (see ``RankingResult.cost_basis``).
    """

    endpoint: Endpoint
    ttft_ms: float | None
    tps: float | None
    window: str
    ttft_samples: int
    tps_samples: int
    uptime: float | None
    cost_usd: float
    health: HealthState
    deprioritized: Reason | None = None
    exploration: bool = False
    ttft_window: str = WINDOW_NONE
    tps_window: str = WINDOW_NONE
    weight: float | None = None

    @property
    def key(self) -> EndpointKey:
        return self.endpoint.key

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": str(self.endpoint.key),
            "provider": self.endpoint.provider.name,
            "ttft_ms": self.ttft_ms,
            "tps": self.tps,
            "window": self.window,
            "ttft_window": self.ttft_window,
            "tps_window": self.tps_window,
            "ttft_samples": self.ttft_samples,
            "tps_samples": self.tps_samples,
            "uptime": self.uptime,
            "cost_usd": self.cost_usd,
            "health": self.health.value,
            "weight": self.weight,
            "exploration": self.exploration,
            "deprioritized": None if self.deprioritized is None else self.deprioritized.to_dict(),
        }


class _RankedEndpointBuilder:
    """Same slot layout as RankedEndpoint, but a plain (fast) ``__init__``.

    A frozen dataclass sets each field through ``object.__setattr__``, which
    made building 8 RankedEndpoints ~60% of ``rank()``'s budget. Building this
    twin and switching ``__class__`` (allowed: identical ``__slots__``, same
    base) yields a genuine, frozen, equal RankedEndpoint for ~1/6 of the cost.
    ``tests/test_ranking.py`` checks equality with the normal constructor.
    """

    __slots__ = RankedEndpoint.__slots__

    def __init__(
        self,
        endpoint: Endpoint,
        ttft_ms: float | None,
        tps: float | None,
        window: str,
        ttft_samples: int,
        tps_samples: int,
        uptime: float | None,
        cost_usd: float,
        health: HealthState,
        deprioritized: Reason | None,
        exploration: bool,
        ttft_window: str,
        tps_window: str,
        weight: float | None,
    ) -> None:
        self.endpoint = endpoint
        self.ttft_ms = ttft_ms
        self.tps = tps
        self.window = window
        self.ttft_samples = ttft_samples
        self.tps_samples = tps_samples
        self.uptime = uptime
        self.cost_usd = cost_usd
        self.health = health
        self.deprioritized = deprioritized
        self.exploration = exploration
        self.ttft_window = ttft_window
        self.tps_window = tps_window
        self.weight = weight


def make_ranked(*fields: Any) -> RankedEndpoint:
    """``RankedEndpoint(*fields)`` (positional, in field order) on the hot path's budget.

    The typed signature is ``_RankedEndpointBuilder.__init__``'s.
    """
    obj = _RankedEndpointBuilder(*fields)
    obj.__class__ = RankedEndpoint  # type: ignore[assignment]
    return obj  # type: ignore[return-value]


assert _RankedEndpointBuilder.__slots__ == tuple(RankedEndpoint.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class RankingResult:
    """The ranking plus its routing metadata.

    ``ranked`` may be empty (every endpoint hard-filtered): the server turns
    that into a clear error. ``probing`` lists ranked endpoints that are
    half-open, so the server can grant them probe permits. ``cost_basis`` is
    "request" (``cost_usd`` is USD per request) or "blended_per_mtok".
    """

    ranked: tuple[RankedEndpoint, ...]
    excluded: tuple[Exclusion, ...]
    strategy: str
    sort: Sort | None
    percentile: float
    panic: bool = False
    exploration: bool = False
    probing: tuple[EndpointKey, ...] = ()
    exploration_reason: Reason | None = None
    cost_basis: str = "blended_per_mtok"

    @property
    def execution_order(self) -> tuple[EndpointKey, ...]:
        return tuple(r.endpoint.key for r in self.ranked)

    @property
    def deprioritized(self) -> tuple[RankedEndpoint, ...]:
        return tuple(r for r in self.ranked if r.deprioritized is not None)

    def to_metadata(self) -> dict[str, Any]:
        """A JSON-ready routing metadata block (for the sidecar's ``routing`` field)."""
        return {
            "strategy": self.strategy,
            "sort": None if self.sort is None else self.sort.value,
            "percentile": self.percentile,
            "panic": self.panic,
            "exploration": self.exploration,
            "exploration_reason": (
                None if self.exploration_reason is None else self.exploration_reason.to_dict()
            ),
            "cost_basis": self.cost_basis,
            "execution_order": [str(r.endpoint.key) for r in self.ranked],
            "ranked": [r.to_dict() for r in self.ranked],
            "deprioritized": [
                {"endpoint": str(r.endpoint.key), **r.deprioritized.to_dict()}
                for r in self.ranked
                if r.deprioritized is not None
            ],
            "excluded": [
                {"endpoint": str(x.endpoint.key), **x.reason.to_dict()} for x in self.excluded
            ],
            "probing": [str(k) for k in self.probing],
        }
