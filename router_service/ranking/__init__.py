"""Ranking: order a model's endpoints for one request, and explain every placement.

A pure function of (request, model's endpoints, stats snapshot, health views,
now, random source, config); see ``router_service.ranking.core`` for the
semantics, the cost and load-balance formulas, and the reason codes in
``router_service.ranking.result``.
"""

from router_service.ranking.core import rank
from router_service.ranking.request import (
    DEFAULT_CONFIG,
    MAX_NAME_LEN,
    MAX_PROVIDER_LIST,
    MAX_TOKENS,
    RankingConfig,
    RankingInputError,
    RoutingRequest,
    Sort,
)
from router_service.ranking.result import (
    Exclusion,
    RankedEndpoint,
    RankingResult,
    Reason,
)

__all__ = [
    "DEFAULT_CONFIG",
    "MAX_NAME_LEN",
    "MAX_PROVIDER_LIST",
    "MAX_TOKENS",
    "Exclusion",
    "RankedEndpoint",
    "RankingConfig",
    "RankingInputError",
    "RankingResult",
    "Reason",
    "RoutingRequest",
    "Sort",
    "rank",
]
