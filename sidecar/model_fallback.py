"""Model fallbacks: the ranked providers of every model a request names, as one plan.

OpenRouter's top-level ``models`` and Vercel's ``providerOptions.gateway.models``
name models to try when the first one cannot answer. The sidecar treats the
chain like provider fallback one level up: every model is ranked up front
(concurrently; from the ranking cache after the first request), each model's
providers pass the same hard filters (ZDR, ``only``, ``ignore``,
``max_price``: the request's preferences apply to every model), and the
attempts run in order, model after model, within one attempt limit and one
deadline, before the first token only.

Why rank every model before the first attempt: an unknown model in the chain
must be a 400 before anything is sent upstream (not a surprise after the
primary's providers failed), and ``routing.fallbacks_available`` can then
name what else could have served.

The attempt limit (``--max-attempts``) counts attempts across the chain. When
the chain has more eligible providers than the limit, each fallback model
keeps one attempt for its best provider and the primary gets the rest (see
``allot``), so naming a fallback model is never silently useless.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from router_common.json_text import as_json
from sidecar.preferences import ParsedRequest, RequestError
from sidecar.ranking_client import Ranking, RankingClient, Route


@dataclass(slots=True)
class Leg:
    """One model of the request: its ranking and the routes this sidecar may try."""

    #: The request as sent to this model (``model`` and the ranking key are its own).
    req: ParsedRequest
    ranking: Ranking
    #: Eligible routes in order (cooldowns applied, hard filters held, keys present).
    routes: list[Route]
    #: Providers left out for want of an API key here.
    skipped: list[str]
    #: Attempts allotted to this model (see ``allot``).
    take: int = 0


@dataclass(slots=True)
class RequestPlan:
    """Every model's leg, and the attempts in the order they will be made."""

    req: ParsedRequest
    legs: list[Leg]
    #: Models of the chain that had no eligible provider: ``{"model", "reason"}``.
    unranked: list[dict[str, str]] = field(default_factory=list)
    attempts: list[tuple[Leg, Route]] = field(default_factory=list)


async def rank_models(
    ranking: RankingClient, req: ParsedRequest
) -> tuple[list[tuple[ParsedRequest, Ranking]], list[dict[str, str]]]:
    """Rank every model of ``req.models`` (concurrently); the ranked ones and the skipped ones.

    An unknown model is a 400 naming every unknown one (``param``: ``models``,
    or ``model`` when only that one is unknown); a model whose providers all
    fail the hard filters is skipped, and if every model is, that is a 400.
    """
    reqs = [req.for_model(m) for m in req.models]
    # From the cache without a task per model (the common case); the rest concurrently.
    results: list[Ranking | BaseException | None] = [ranking.cached(r) for r in reqs]
    misses = [i for i, hit in enumerate(results) if hit is None]
    if misses:
        fetched = await asyncio.gather(
            *(ranking.rank_uncached(reqs[i]) for i in misses), return_exceptions=True
        )
        for i, got in zip(misses, fetched, strict=True):
            results[i] = got
    ranked: list[tuple[ParsedRequest, Ranking]] = []
    unknown: list[str] = []
    skipped: list[dict[str, str]] = []
    for r, result in zip(reqs, results, strict=True):
        if isinstance(result, RequestError):
            if result.code == "model_not_found":
                unknown.append(r.model)
            elif result.code == "no_eligible_provider":
                skipped.append({"model": r.model, "reason": "no_eligible_provider"})
            else:
                raise result  # router unreachable without a catalog, ...
        elif isinstance(result, BaseException):
            raise result
        elif result is not None:
            ranked.append((r, result))
    if unknown:
        names = ", ".join(as_json(m) for m in unknown)
        param = "model" if unknown == [req.model] else "models"
        raise RequestError(
            f"unknown model{'s' if len(unknown) > 1 else ''} (not in the catalog): {names}",
            param,
            400,
            "model_not_found",
        )
    if not ranked:
        raise RequestError(
            "no provider of any model in models satisfies the routing preferences",
            "provider",
            400,
            "no_eligible_provider",
        )
    return ranked, skipped


def allot(legs: list[Leg], max_attempts: int) -> list[tuple[Leg, Route]]:
    """The attempts, in order, at most ``max_attempts`` in all.

    First one attempt per model that has an eligible route (the chain's order),
    then the remaining budget to each model in order: so the primary gets every
    attempt the fallback models do not need for their best provider. A single
    model gets ``min(len(routes), max_attempts)``, as before model fallbacks.
    """
    budget = max(1, max_attempts)
    for leg in legs:
        leg.take = 1 if budget > 0 and leg.routes else 0
        budget -= leg.take
    for leg in legs:
        extra = min(len(leg.routes) - leg.take, budget)
        if extra > 0:
            leg.take += extra
            budget -= extra
    return [(leg, route) for leg in legs for route in leg.routes[: leg.take]]


def fallbacks_available(plan: RequestPlan, tried: set[tuple[str, str]]) -> list[dict[str, str]]:
    """Eligible (model, provider) pairs that were not tried, in the order they ranked."""
    return [
        {"model": leg.req.model, "provider": route.provider}
        for leg in plan.legs
        for route in leg.routes
        if (leg.req.model, route.provider) not in tried
    ]


def chain_summary(plan: RequestPlan) -> dict[str, Any]:
    """The chain's part of ``routing`` (only for requests that named fallback models)."""
    out: dict[str, Any] = {"models": list(plan.req.models)}
    if plan.unranked:
        out["models_skipped"] = plan.unranked
    return out
