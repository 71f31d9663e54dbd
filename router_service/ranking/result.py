"""The ranking's answer: the ordered endpoints and the routing metadata explaining it.

Every placement carries a ``Reason`` (``router_common.routing.reasons``: a
stable code, a sentence and the numbers behind it), because users of a router
want to see *why* a request landed where it did (Vercel's "routing metadata
block"). The wire form is built by ``router_service.wire.rank_response``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from router_common.catalog_model import Endpoint
from router_common.domain import EndpointKey, Sort
from router_common.routing.cost import CostBasis
from router_common.routing.reasons import Reason
from router_service.model import HealthState

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
#: The decayed recent estimate (router_service.sketches.recent), scaled to the percentile.
WINDOW_RECENT = "recent"
WINDOW_NONE = "none"


class Exclusion(NamedTuple):
    """An endpoint that will not be tried for this request, and why."""

    endpoint: Endpoint
    reason: Reason


class RankedEndpoint(NamedTuple):
    """One endpoint in execution order, with the numbers the decision used.

    ``ttft_ms`` / ``tps`` are at the request's percentile, from ``ttft_window``
    / ``tps_window`` ("5m", "1h" or "none"); ``window`` is the window of the
    metric the ranking used (tps for ``sort=tps``, else ttft). ``cost_usd`` is
    the estimated request cost when the request gave token estimates, else the
    blended price in USD per million tokens (see ``RankingResult.cost_basis``).

    A NamedTuple: ``rank()`` builds one per candidate on every call, and a
    tuple is built in C (``tuple.__new__``) where a frozen dataclass sets each
    field through ``object.__setattr__``.
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
    #: Thin, stale or no data: a client reusing this ranking may put it first
    #: for ``RankingResult.exploration_share`` of its requests.
    explorable: bool = False
    #: Suggested first-token timeout (None: no data to base one on).
    first_token_timeout_ms: float | None = None
    #: When to start a hedge if this endpoint has no first token yet (its recent p95).
    hedge_after_ms: float | None = None
    #: Relative chance of being the one explored among the explorable endpoints
    #: (``RankingConfig.exploration_promise_exponent``); None unless explorable.
    exploration_weight: float | None = None

    @property
    def key(self) -> EndpointKey:
        return self.endpoint.key


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
    cost_basis: CostBasis = "blended_per_mtok"
    #: The share of requests a client reusing this ranking should explore with
    #: (0 under ``order`` and in panic).
    exploration_share: float = 0.0

    @property
    def execution_order(self) -> tuple[EndpointKey, ...]:
        return tuple(r.endpoint.key for r in self.ranked)

    @property
    def deprioritized(self) -> tuple[RankedEndpoint, ...]:
        return tuple(r for r in self.ranked if r.deprioritized is not None)
