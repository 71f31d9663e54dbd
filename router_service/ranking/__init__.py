"""Ranking: order a model's endpoints for one request, and explain every placement.

A pure function of (request, model's endpoints, stats snapshot, health views,
now, random source, config); see ``router_service.ranking.core`` for the
semantics, the cost and load-balance formulas, and the reason codes in
``router_common.routing.reasons``.
"""

from router_service.ranking.core import rank
from router_service.ranking.request import (
    DEFAULT_CONFIG,
    RankingConfig,
    RankingInputError,
    RoutingRequest,
)
from router_service.ranking.result import Exclusion, RankedEndpoint, RankingResult

__all__ = [
    "DEFAULT_CONFIG",
    "Exclusion",
    "RankedEndpoint",
    "RankingConfig",
    "RankingInputError",
    "RankingResult",
    "RoutingRequest",
    "rank",
]
