"""Where the order of providers comes from: the router, a cache, or the fallback catalog.

The router is asked once per (model, preferences) per ``rank_cache_ttl_s``, so
it is not on every request's path. When it is unreachable the sidecar keeps
serving from the last ranking it got for those preferences, then from the
fallback catalog (with the hard filters applied locally by ``rank_from_catalog``).
On top of any ranking, failures this sidecar saw itself push the endpoint to
the back for a short cooldown, because the router learns of them only later.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import grpc
from google.protobuf.json_format import MessageToDict
from yarl import URL

from router_common.catalog_model import Catalog, Endpoint, unknown_model_message
from router_common.domain import EndpointKey, Sort
from router_common.json_text import as_json
from router_common.limits import MAX_FIRST_TOKEN_TIMEOUT_MS
from router_common.pb import router_pb2, router_pb2_grpc
from router_common.routing.cost import cost_factors, endpoint_cost
from router_common.routing.filters import HardFilters, hard_filter
from router_common.routing.order import (
    DEFAULT_NEAR_TIE_TOLERANCE,
    kept_without_fallbacks,
    order_tier,
    weighted_choice,
    weighted_order,
)
from router_common.routing.validation import PreferencesError, check_known_providers
from router_common.wire_enums import SORT_FROM_WIRE
from sidecar.config import SidecarSettings
from sidecar.preferences import ParsedRequest, RequestError, invalid_preferences
from sidecar.router_channel import rpc_detail
from sidecar.router_clock import RouterClock

log = logging.getLogger("sidecar.ranking")

#: Margin after an outcome flush before a ranking is asked again (see note_first_token):
#: the flush's RPC and the router's ingestion take a few ms.
_AFTER_FLUSH_S = 0.1

#: Delay before a background ranking refresh starts (see _refresh_in_background).
_REFRESH_DELAY_S = 0.005

#: gRPC codes that mean "the caller asked for something impossible", not "router down".
_CALLER_CODES = {
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
}


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint to try: where to send the request and what it costs."""

    provider: str
    base_url: str
    api_key_env: str
    zero_data_retention: bool
    upstream_model: str
    input_price_per_million: float = 0.0
    output_price_per_million: float = 0.0
    #: The router asked for this endpoint on purpose (probe/exploration): local
    #: cooldowns do not override that.
    router_wants_it: bool = False
    #: Load-balance weight from the router (None unless strategy load_balance).
    weight: float | None = None
    #: The router moved this endpoint down (degraded, missed preference, ...).
    deprioritized: bool = False
    #: Thin, stale or no data at the router: ``redraw`` may put it first to explore.
    explorable: bool = False
    #: The router's relative chance of this route being the one explored (its
    #: promise, ``RankedEndpoint.exploration_weight``; 1 when unset).
    exploration_weight: float = 1.0
    #: The router's suggested first-token timeout and hedge delay, seconds (None: none).
    first_token_timeout_s: float | None = None
    hedge_after_s: float | None = None
    #: For a route without its own ``hedge_after_s`` (too little data at the router):
    #: the largest one of its ranking, so a slow start is still noticed (timeouts.py).
    peer_hedge_after_s: float | None = None
    #: The router has a TTFT value for this endpoint (False: never measured, or too
    #: little data); a ranking led by an unmeasured endpoint is reused only briefly.
    ttft_known: bool = True
    #: The router's health allows exploring it once its data goes stale (HEALTHY or
    #: DEGRADED; never PROBING, whose traffic is the router's half-open permit).
    may_explore_when_stale: bool = True
    #: Where chat completions go, parsed once: aiohttp takes a URL object as it
    #: is, whereas a string would be parsed again on every attempt.
    chat_url: URL = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "chat_url", URL(self.base_url.rstrip("/") + "/chat/completions"))

    @classmethod
    def from_proto(cls, ep: router_pb2.RankedEndpoint) -> Route:
        return cls(
            provider=ep.provider.name,
            base_url=ep.provider.base_url,
            api_key_env=ep.provider.api_key_env,
            zero_data_retention=ep.provider.zero_data_retention,
            upstream_model=ep.upstream_model,
            input_price_per_million=ep.input_price_per_million,
            output_price_per_million=ep.output_price_per_million,
            router_wants_it=ep.exploration or ep.health == router_pb2.HEALTH_STATE_PROBING,
            weight=ep.weight if ep.HasField("weight") else None,
            # `exploration` is the reason an endpoint was put first, not a demotion.
            deprioritized=ep.HasField("deprioritized") and ep.deprioritized.code != "exploration",
            explorable=ep.explorable,
            exploration_weight=_exploration_weight(ep),
            first_token_timeout_s=_suggested_s(ep, "first_token_timeout_ms"),
            hedge_after_s=_suggested_s(ep, "hedge_after_ms"),
            ttft_known=ep.HasField("ttft_ms"),
            may_explore_when_stale=ep.health in _EXPLORABLE_HEALTH,
        )

    @classmethod
    def from_catalog(cls, ep: Endpoint) -> Route:
        return cls(
            provider=ep.provider.name,
            base_url=ep.provider.base_url,
            api_key_env=ep.provider.api_key_env,
            zero_data_retention=ep.provider.zero_data_retention,
            upstream_model=ep.upstream_model,
            input_price_per_million=ep.input_price_per_mtok,
            output_price_per_million=ep.output_price_per_mtok,
        )


@dataclass(frozen=True, slots=True)
class Ranking:
    """An ordered list of routes plus the metadata to show the caller.

    ``source`` is ``router`` (fresh answer), ``cache`` (reused within the TTL),
    ``stale`` (expired, used because the router is unreachable) or ``catalog``.
    """

    routes: tuple[Route, ...]
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    fetched_at: float = 0.0

    def for_reuse(self) -> Ranking:
        """The version to cache: the router's one-shot choices undone.

        A probe or an exploration pick is meant for the one request that
        triggered the RPC; replaying it for every cached hit would send a
        burst of traffic to an endpoint that may still be failing. So reused
        copies move those routes to the back and let local cooldowns apply.
        """
        if not any(r.router_wants_it for r in self.routes):
            return self
        normal = [r for r in self.routes if not r.router_wants_it]
        one_shot = [replace(r, router_wants_it=False) for r in self.routes if r.router_wants_it]
        routes = tuple(normal + one_shot)
        metadata = {
            k: v
            for k, v in self.metadata.items()
            if k not in ("exploration", "exploration_provider")
        }
        # The router's reason for its one-shot pick goes with the pick.
        moved = [
            d
            for d in metadata.get("deprioritized", ())
            if not (isinstance(d, dict) and d.get("reason", {}).get("code") == "exploration")
        ]
        if moved:
            metadata["deprioritized"] = moved
        else:
            metadata.pop("deprioritized", None)
        metadata["execution_order"] = [r.provider for r in routes]
        return replace(self, routes=routes, metadata=metadata)

    def redraw(
        self,
        rng: random.Random,
        explore: Callable[[float, tuple[Route, ...]], Route | None] | None = None,
    ) -> Ranking:
        """A fresh order for a reused ranking: the weighted head redrawn, sometimes an exploration.

        The router's order is one draw; reusing it for every request within
        the cache TTL would pin this sidecar to one endpoint (and a fleet of
        sidecars to whichever each happened to draw). So, per request:

        - the leading block of weighted, not-deprioritized routes (every
          endpoint under ``load_balance``; the near-best band under ``sort:
          ttft``/``tps``; on a fresh router, the equally weighted unmeasured
          endpoints) is redrawn with the router's weights
          (Efraimidis-Spirakis, as the router does); the tail keeps its place;
        - with the router's ``exploration_share``, one ``explorable`` route
          (thin, stale or no data), drawn by the router's
          ``exploration_weight`` (promise), is put first, and the metadata marks it
          (``exploration: true``, ``exploration_provider``), as the router
          does for the request that asked it. ``explore(share, candidates)``
          replaces that coin and draw when given: it returns the route to
          explore or None (the ranking client paces explorations and picks
          by its own view, see ``RankingClient._explore``).
        """
        routes = self.routes
        metadata = self.metadata
        if metadata.get("strategy") in _WEIGHTED and routes:
            # The leading run of weighted routes in the same standing as the first: the
            # not-deprioritized ones, or, when the router had no data at all (a fresh
            # router: every endpoint "no data", weighted equally), the unmeasured ones.
            lead = routes[0].deprioritized
            head = 0
            while head < len(routes) and routes[head].weight and routes[head].deprioritized == lead:
                head += 1
            if head >= 2:
                routes = tuple(weighted_order(routes[:head], _route_weight, rng)) + routes[head:]
        share = metadata.get("exploration_share")
        if share and isinstance(share, float | int):
            pick: Route | None = None
            if explore is not None:
                pick = explore(float(share), routes[1:])
            elif rng.random() < share:
                pool = [r for r in routes[1:] if r.explorable]
                pick = _pick_explored(pool, rng) if pool else None
            if pick is not None:
                routes = (pick, *(r for r in routes if r is not pick))
                metadata = dict(metadata, exploration=True, exploration_provider=pick.provider)
        if routes is self.routes:
            return self
        metadata = dict(metadata, execution_order=[r.provider for r in routes])
        return replace(self, routes=routes, metadata=metadata)


_K = TypeVar("_K")
_V = TypeVar("_V")


def _put_bounded(table: OrderedDict[_K, _V], key: _K, value: _V, limit: int) -> None:
    """Set ``key`` as the most recent entry, dropping the oldest beyond ``limit``: the
    bound on every per-key table a caller's traffic can fill."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > limit:
        table.popitem(last=False)


#: Router health states under which a stale endpoint may be explored (as the router does).
_EXPLORABLE_HEALTH = frozenset(
    {
        router_pb2.HEALTH_STATE_UNSPECIFIED,
        router_pb2.HEALTH_STATE_HEALTHY,
        router_pb2.HEALTH_STATE_DEGRADED,
    }
)


def rank_from_catalog(
    catalog: Catalog,
    model: str,
    prefs: router_pb2.RoutingPreferences,
    input_tokens: int = 0,
    output_tokens: int = 0,
    rng: random.Random | None = None,
    pref_params: Mapping[str, str] | None = None,
) -> tuple[list[Route], list[dict[str, str]]]:
    """The order the router would give with no metrics, computed from the catalog.

    Used only when the router is unreachable, so a ZDR, ``only``, ``ignore`` or
    ``max_price`` request keeps its guarantees even then, and ``sort: cost``
    and ``order`` mean what they mean at the router: the same hard filters,
    request cost and near-tie draw (``router_common.routing``), so with the
    same random source the order is the router's (``tests/test_fallback_parity.py``).
    ``sort: ttft``/``tps`` have no data here, so, as at the router, their
    candidates are shuffled; without a sort the catalog order stands (the
    router's load-balance weights need its metrics). Returns the routes and the
    excluded providers in the router's JSON shape (``{"provider", "reason": {"code",
    "detail", "numbers"}}``, numbers omitted when none, as proto3 JSON omits an
    empty map), so ``routing.excluded`` reads alike whichever source ranked.
    Raises RequestError when the model is unknown or nothing is left.
    """
    entry = catalog.models.get(model)
    if entry is None:
        raise RequestError(unknown_model_message(model), "model", 404, "model_not_found")
    try:  # as the router refuses them (router_common.routing.validation)
        check_known_providers(prefs, catalog.providers)
    except PreferencesError as exc:
        raise invalid_preferences(exc, pref_params) from None
    filters = HardFilters.from_preferences(prefs)
    kept: list[Endpoint] = []
    excluded: list[dict[str, Any]] = []
    for ep in entry.endpoints:
        reason = (
            hard_filter(
                filters,
                ep.provider.name,
                ep.provider.zero_data_retention,
                ep.input_price_per_mtok,
                ep.output_price_per_mtok,
            )
            if filters.active
            else None
        )
        if reason is not None:
            why: dict[str, Any] = {"code": reason.code, "detail": reason.detail}
            if reason.numbers:
                why["numbers"] = dict(reason.numbers)
            excluded.append({"provider": ep.provider.name, "reason": why})
        else:
            kept.append(ep)
    if not kept:
        raise RequestError(
            no_eligible_message(model, excluded), "provider", 400, "no_eligible_provider"
        )
    keys: list[float | None] | None = None
    sort = SORT_FROM_WIRE.get(prefs.sort)
    if sort is Sort.COST:
        factors = cost_factors(input_tokens, output_tokens)
        keys = [
            endpoint_cost(factors, e.input_price_per_mtok, e.output_price_per_mtok) for e in kept
        ]
    elif sort is not None:
        keys = [None] * len(kept)
    positions = order_tier(
        range(len(kept)),
        [e.provider.name for e in kept],
        {name: i for i, name in enumerate(prefs.order)},
        keys,
        None,
        DEFAULT_NEAR_TIE_TOLERANCE,
        rng or random.Random(),
    )
    routes = [Route.from_catalog(kept[i]) for i in positions]
    if prefs.HasField("allow_fallbacks") and not prefs.allow_fallbacks:
        routes = routes[: kept_without_fallbacks([r.provider for r in routes], prefs.order)]
    return routes, excluded


class Cooldowns:
    """Endpoints this sidecar saw fail or start slowly, and until when they are not tried first.

    Two kinds, because they end differently: a failure cooldown ends at the
    endpoint's next success; a slow-start one (``slow``: an attempt had no
    first token long after the endpoint's recent p95) only by time, since
    the slow attempt itself usually succeeds in the end. Why a local view at
    all: the router hears of an attempt only after it ended, the outcome
    flush and the next ranking refresh (2-3 s at the defaults), and at tens
    of requests per second a provider that slowed 6x would get every request
    of those seconds; this sidecar knows after ``slow_start_multiple`` times
    the endpoint's p95, from the first attempt that waits. Bounded (LRU by
    insertion, per kind) so a flood of distinct endpoints cannot grow memory.
    """

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._until: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._slow: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    def _mark(
        self, table: OrderedDict[tuple[str, str], float], key: tuple[str, str], s: float
    ) -> None:
        until = self._clock() + s
        _put_bounded(table, key, max(until, table.get(key, 0.0)), self._max)

    def fail(self, model: str, provider: str, seconds: float) -> None:
        self._mark(self._until, (model, provider), seconds)

    def slow(self, model: str, provider: str, seconds: float) -> None:
        """An attempt is still waiting for its first token far beyond the endpoint's p95."""
        self._mark(self._slow, (model, provider), seconds)

    def failing(self, model: str, provider: str) -> bool:
        """In a failure cooldown here (a slow-start mark does not count)."""
        return self._active(self._until, (model, provider))

    def succeed(self, model: str, provider: str) -> None:
        self._until.pop((model, provider), None)

    def cooling(self, model: str, provider: str) -> bool:
        key = (model, provider)
        return self._active(self._until, key) or self._active(self._slow, key)

    def _active(self, table: OrderedDict[tuple[str, str], float], key: tuple[str, str]) -> bool:
        until = table.get(key)
        if until is None:
            return False
        if until <= self._clock():
            del table[key]
            return False
        return True

    def apply(self, model: str, routes: tuple[Route, ...]) -> list[Route]:
        """Cooling endpoints move to the back (kept: a slow answer beats none)."""
        if not self._until and not self._slow:
            return list(routes)
        hot = [r for r in routes if r.router_wants_it or not self.cooling(model, r.provider)]
        if len(hot) == len(routes):
            return list(routes)
        return hot + [r for r in routes if r not in hot]


class RankingClient:
    """Answers "in which order do I try the providers for this request?" without failing.

    ``stub`` may be None (no router configured); ``catalog`` may be None (no
    fallback catalog). Concurrent misses for the same key share one RPC.
    """

    def __init__(
        self,
        settings: SidecarSettings,
        stub: router_pb2_grpc.RouterStub | None,
        catalog: Catalog | None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        router_clock: RouterClock | None = None,
    ) -> None:
        self._s = settings
        #: The router's wall clock as seen here, re-measured by every fresh answer:
        #: what outcomes' ``started_at`` is read from (sidecar/router_clock.py).
        self.router_clock = router_clock or RouterClock()
        self._stub = stub
        self.catalog = catalog
        self._clock = clock
        self._cache: OrderedDict[tuple[str, bytes], Ranking] = OrderedDict()
        #: Fresh router answers from a background refresh that carry a probe or an
        #: exploration pick: meant for one request, so the next one takes it as is.
        self._one_shot: dict[tuple[str, bytes], Ranking] = {}
        #: Shared RankProviders calls by key (``_ask_router_once``).
        self._inflight: dict[tuple[str, bytes], asyncio.Task[Ranking | None]] = {}
        #: Background refreshes by key: scheduled (a timer) or running (a task).
        self._refreshes: dict[tuple[str, bytes], asyncio.TimerHandle | asyncio.Task[None]] = {}
        self._router_skip_until = 0.0
        self.router_ok: bool | None = None  # None = not asked yet
        self.cooldowns = Cooldowns(settings.cooldown_entries, clock)
        #: When this sidecar last had a first token from each (model, provider): what
        #: makes an endpoint stale between fetches (bounded LRU, like the cooldowns).
        self._last_token: OrderedDict[tuple[str, str], float] = OrderedDict()
        #: Rankings contradicted by an outcome on its way to the router: key -> the
        #: outcome's ticket; the ranking expires once that ticket is delivered.
        self._expire_on_delivery: OrderedDict[tuple[str, bytes], int] = OrderedDict()
        #: Exploration credit per model (see _explore).
        self._explore_credit: OrderedDict[str, float] = OrderedDict()
        self._rng = rng or random.Random()
        self.on_source: Callable[[str], None] = lambda source: None

    # -- cache -------------------------------------------------------------

    def _get(self, key: tuple[str, bytes]) -> Ranking | None:
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
        return hit

    def _put(self, key: tuple[str, bytes], ranking: Ranking) -> None:
        self._cache[key] = ranking
        self._cache.move_to_end(key)
        while len(self._cache) > self._s.rank_cache_entries:
            self._cache.popitem(last=False)

    # -- ranking -----------------------------------------------------------

    def cached(self, req: ParsedRequest) -> Ranking | None:
        """A ranking without waiting for the router, else None; synchronous.

        Fresh within ``rank_cache_ttl_s``; for ``rank_revalidate_s`` after that
        it is still returned while one background call per key refreshes it
        (stale-while-revalidate), so a request waits for the router only on a
        cold or long-expired key. A background answer that carries a probe or
        an exploration pick is handed, once, to the next request. Split from
        ``rank`` so the common case costs no coroutine: on the time-to-first-
        token path every step counts.
        """
        key = req.cache_key
        now = self._clock()
        if self._one_shot:
            one = self._one_shot.pop(key, None)
            if one is not None and now - one.fetched_at < self._s.rank_cache_ttl_s:
                self.on_source("router")
                return one
        hit = self._cache.get(key)
        if hit is None:
            return None
        ttl = self._s.rank_cache_ttl_s
        if not hit.routes[0].ttft_known and speed_ordered(req.preferences):
            # a fresh router or model: the data that orders this ranking is a second away
            ttl = min(ttl, self._s.rank_cache_unmeasured_ttl_s)
        age = now - hit.fetched_at
        if age >= ttl:
            if (
                ttl <= 0
                or age >= ttl + self._s.rank_revalidate_s
                or self._stub is None
                or now < self._router_skip_until
            ):
                return None  # rank() asks the router, or falls back
            self._refresh_in_background(req)
        self._cache.move_to_end(key)
        self.on_source("cache")
        return hit.redraw(  # stored with source "cache" already
            self._rng,
            lambda share, routes: self._explore(req.model, share, routes, hit.fetched_at, now),
        )

    def _explore(
        self, model: str, share: float, candidates: tuple[Route, ...], fetched_at: float, now: float
    ) -> Route | None:
        """The route a reused ranking explores on this request, or None.

        Paced, not a coin: each request adds ``share`` to the model's credit
        (a random start so a fleet is not in step) and every time it reaches
        1 the request explores and spends 1, so at the router's share of 5%
        exactly one request in 20 explores, with no run of seconds without
        one (a coin leaves 80 requests, 4 s at 20 rps, without one with
        probability 0.95**80, about 1.7%: over a run's many such windows it
        happens). A turn that finds nothing explorable is lost, not banked:
        banked turns were all spent on the next endpoint to go stale, which
        made a slowed provider's explorations regular instead of rare
        (``tests/test_demo.py`` then once found a slowdown "not routed
        around").
        The pick is the explorable route this sidecar heard from least
        recently (never: first), so stale endpoints take turns instead of
        one waiting on luck; when the router weighs them by promise
        (``exploration_weight`` below 1) its weights decide instead.
        """
        credit = self._explore_credit.get(model, self._rng.random()) + share
        pick: Route | None = None
        if credit >= 1.0:
            credit -= 1.0
            pool = [r for r in candidates if self._may_explore(model, r, fetched_at, now)]
            if pool:
                if any(r.exploration_weight < 1.0 for r in pool):
                    pick = _pick_explored(pool, self._rng)
                else:
                    last = self._last_token
                    pick = min(pool, key=lambda r: last.get((model, r.provider), -math.inf))
        _put_bounded(self._explore_credit, model, credit, self._s.rank_cache_entries)
        return pick

    def _may_explore(self, model: str, route: Route, fetched_at: float, now: float) -> bool:
        """May a reused ranking explore ``route`` now? (see ``explore_stale_after_s``)

        The router's explorable marks are a snapshot: an endpoint whose data was
        fresh at the fetch goes stale during the reuse, and without this it
        would become explorable only at the next fetch (up to the TTL later),
        which is what delayed finding a recovered provider by seconds. An
        endpoint in a local cooldown is left out: the pick would be moved
        back anyway, and the share spent on nothing.
        """
        if self.cooldowns.cooling(model, route.provider):
            return False
        if route.explorable:
            return True
        if not route.may_explore_when_stale or self._s.explore_stale_after_s <= 0:
            return False
        seen = self._last_token.get((model, route.provider), fetched_at)
        return now - max(seen, fetched_at) > self._s.explore_stale_after_s

    async def rank(self, req: ParsedRequest) -> Ranking:
        """The order for this request; raises RequestError only for the caller's mistakes."""
        return self.cached(req) or await self.rank_uncached(req)

    async def rank_uncached(self, req: ParsedRequest) -> Ranking:
        """``rank`` once ``cached`` has said None: ask the router, else fall back.

        When the router's last call failed and there is something to fall back on
        (a stale ranking, the fallback catalog), the retry after ``router_retry_s``
        runs in the background and this request is served from the fallback: a
        router that hangs (stopped, its packets dropped) used to make every request
        arriving during each retry wait ``rank_timeout_s`` for nothing, so about
        half the traffic took a second longer for as long as it hung.
        """
        hit = self._get(req.cache_key)
        if self._stub is not None and self._clock() >= self._router_skip_until:
            if self.router_ok is False and self._has_fallback(req, hit):
                self._refresh_in_background(req)
            else:
                ranking = await self._ask_router_once(req)
                if ranking is not None:
                    self.on_source("router")
                    return ranking
        return self._fallback(req, hit)

    def _has_fallback(self, req: ParsedRequest, stale: Ranking | None) -> bool:
        """``_fallback`` would rank this request (a model the fallback catalog does not
        list is the router's to answer: it may know it)."""
        if stale is not None and self._clock() - stale.fetched_at < self._s.rank_cache_stale_s:
            return True
        return self.catalog is not None and req.model in self.catalog.models

    async def _ask_router_once(self, req: ParsedRequest) -> Ranking | None:
        """``_ask_router``, shared by every caller asking for the same key meanwhile.

        The call runs in its own task, which no caller's cancellation reaches:
        when it ran in the first caller's task, that app leaving (its handler
        cancelled) ended the call with ``CancelledError`` for every other
        request waiting on the same key, and their connections were dropped as
        if they had left too (counted 499). The task is bounded by
        ``rank_timeout_s``; its answer still fills the cache when all have left.
        """
        key = req.cache_key
        call = self._inflight.get(key)
        if call is None:
            call = asyncio.get_running_loop().create_task(self._ask_router(req))
            self._inflight[key] = call
            call.add_done_callback(functools.partial(self._call_done, key))
        return await asyncio.shield(call)

    def _call_done(self, key: tuple[str, bytes], call: asyncio.Task[Ranking | None]) -> None:
        if self._inflight.get(key) is call:
            del self._inflight[key]
        if not call.cancelled():
            call.exception()  # retrieved: every caller may have left

    def note_first_token(self, req: ParsedRequest, route: Route, ttft_s: float) -> bool:
        """An attempt answered; True when its answer is evidence the cached ranking
        lacks, so its outcome should reach the router at once (an urgent flush)
        and the ranking be asked again once it has (``expire_when_delivered``).

        Evidence, for a ranking ordered by speed: the router had no TTFT for the
        endpoint (a fresh router's first answers); an explorable endpoint (stale,
        thin or no data) beat the leader's p95 (a recovered provider found by
        exploration); an answer took longer than ``slow_start_multiple`` x its
        own p95 (a provider that slowed). Exploration is how a recovery is
        found and the first answers are how a fresh router learns which
        provider is fastest, but the cached order would otherwise be replayed
        for up to ``rank_cache_ttl_s`` after. An ordinary answer is no
        evidence and costs no extra call.

        Without a delivery notice (no urgent flushes), an exploration that beat
        the leader still makes the ranking expire just after the next regular
        outcome flush, as before.
        """
        now = self._clock()
        _put_bounded(self._last_token, (req.model, route.provider), now, self._s.cooldown_entries)
        if not speed_ordered(req.preferences):
            return False
        key = req.cache_key
        hit = self._cache.get(key)
        if hit is None:
            return False
        head = hit.routes[0]
        p95 = head.hedge_after_s
        if not route.ttft_known:
            return True
        own = route.hedge_after_s
        multiple = self._s.slow_start_multiple
        if own is not None and multiple > 0 and ttft_s > multiple * own:
            return True
        if not route.explorable or head.provider == route.provider:
            return False
        if p95 is None or not ttft_s < p95:
            return False
        expire_at = now + self._s.outcome_flush_interval_s + _AFTER_FLUSH_S
        fetched_at = expire_at - self._s.rank_cache_ttl_s  # the TTL counts from fetched_at
        if fetched_at < hit.fetched_at:
            self._cache[key] = replace(hit, fetched_at=fetched_at)
        return True

    def expire_when_delivered(self, req: ParsedRequest, ticket: int) -> None:
        """The ranking for ``req`` expires once the outcome with ``ticket`` reached the router."""
        if ticket <= 0:
            return
        _put_bounded(self._expire_on_delivery, req.cache_key, ticket, self._s.rank_cache_entries)

    def on_delivered(self, through: int) -> None:
        """Outcomes up to ticket ``through`` were acknowledged: expire the rankings they
        contradict, so the next request starts a (background) refresh that sees them."""
        if not self._expire_on_delivery:
            return
        done = [k for k, t in self._expire_on_delivery.items() if t <= through]
        if not done:
            return
        now = self._clock()
        for key in done:
            del self._expire_on_delivery[key]
            hit = self._cache.get(key)
            if hit is None:
                continue
            ttl = self._s.rank_cache_ttl_s
            if not hit.routes[0].ttft_known:
                ttl = min(ttl, self._s.rank_cache_unmeasured_ttl_s)
            fetched_at = now - ttl
            if fetched_at < hit.fetched_at:
                self._cache[key] = replace(hit, fetched_at=fetched_at)

    def _refresh_in_background(self, req: ParsedRequest) -> None:
        """Ask the router for this key without anyone waiting (one call per key at a time).

        Started a few ms later, not at once: the request that found the ranking
        expired is on its way to a provider, and an RPC set up in the middle of
        that would add its cost (about a millisecond here) to that request's
        time to first token.
        """
        key = req.cache_key
        if key in self._refreshes or key in self._inflight:
            return
        loop = asyncio.get_running_loop()
        self._refreshes[key] = loop.call_later(_REFRESH_DELAY_S, self._start_refresh, req)

    def _start_refresh(self, req: ParsedRequest) -> None:
        key = req.cache_key
        task = asyncio.get_running_loop().create_task(self._refresh(req))
        self._refreshes[key] = task
        task.add_done_callback(lambda _: self._refreshes.pop(key, None))

    async def _refresh(self, req: ParsedRequest) -> None:
        try:
            ranking = await self._ask_router_once(req)
        except RequestError:
            return  # the request that finds the ranking expired will ask, and be told
        except Exception:  # never let a background refresh die unobserved
            log.exception("background ranking refresh failed")
            return
        if ranking is not None and any(r.router_wants_it for r in ranking.routes):
            self._one_shot[req.cache_key] = ranking
            while len(self._one_shot) > self._s.rank_cache_entries:
                self._one_shot.pop(next(iter(self._one_shot)))

    async def close(self) -> None:
        """Cancel background refreshes and shared ranking calls (at shutdown)."""
        pending: list[asyncio.TimerHandle | asyncio.Task[Any]] = [
            *self._refreshes.values(),
            *self._inflight.values(),
        ]
        self._refreshes.clear()
        for handle in pending:
            handle.cancel()
        tasks = [t for t in pending if isinstance(t, asyncio.Task)]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _ask_router(self, req: ParsedRequest) -> Ranking | None:
        """One RankProviders call; None when the router is unusable right now."""
        assert self._stub is not None
        msg = router_pb2.RankProvidersRequest(
            model=req.model,
            preferences=req.preferences,
            estimated_input_tokens=req.estimated_input_tokens,
            max_output_tokens=req.max_output_tokens,
        )
        sent = self.router_clock.wall()
        try:
            resp = await self._stub.RankProviders(msg, timeout=self._s.rank_timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _CALLER_CODES:
                self.router_ok = True
                raise _caller_error(exc, req.pref_params) from None
            self._router_down(exc.code().name, rpc_detail(exc))
            return None
        except Exception as exc:  # channel closed during shutdown, etc.
            self._router_down(type(exc).__name__, rpc_detail(exc))
            return None
        self.router_ok = True
        self.router_clock.observe(sent, resp.metadata.ranked_at, self.router_clock.wall())
        metadata = MessageToDict(resp.metadata, preserving_proto_field_name=True)
        if resp.metadata.exploration:  # name the pick, as a per-request exploration does
            pick = next((ep.provider.name for ep in resp.endpoints if ep.exploration), None)
            if pick is not None:
                metadata["exploration_provider"] = pick
        ranking = Ranking(
            routes=_with_peer_p95(tuple(Route.from_proto(ep) for ep in resp.endpoints)),
            source="router",
            metadata=metadata,
            fetched_at=self._clock(),
        )
        if not ranking.routes:  # the router says FAILED_PRECONDITION instead; defensive
            raise RequestError(
                no_eligible_message(req.model, []), "provider", 400, "no_eligible_provider"
            )
        self._put(req.cache_key, replace(ranking.for_reuse(), source="cache"))
        return ranking

    def _router_down(self, why: str, detail: str = "") -> None:
        if self.router_ok is not False:
            log.warning(
                "router unreachable, serving from cache/catalog",
                extra={"why": why, "detail": detail},
            )
        self.router_ok = False
        self._router_skip_until = self._clock() + self._s.router_retry_s

    def _fallback(self, req: ParsedRequest, stale: Ranking | None) -> Ranking:
        if stale is not None and self._clock() - stale.fetched_at < self._s.rank_cache_stale_s:
            self.on_source("stale")
            return replace(stale.redraw(self._rng), source="stale")
        if self.catalog is None:
            raise RequestError(
                "the router is unreachable and no fallback catalog is configured",
                None,
                503,
                "router_unavailable",
            )
        routes, excluded = rank_from_catalog(
            self.catalog,
            req.model,
            req.preferences,
            req.estimated_input_tokens,
            req.max_output_tokens,
            self._rng,
            req.pref_params,
        )
        self.on_source("catalog")
        return Ranking(
            routes=tuple(routes),
            source="catalog",
            # Empty lists omitted, as in the router's metadata (proto3 JSON).
            metadata={
                "strategy": "fallback_catalog",
                "execution_order": [r.provider for r in routes],
                **({"excluded": excluded} if excluded else {}),
            },
            fetched_at=self._clock(),
        )

    @property
    def router_skipped(self) -> bool:
        """A call to the router failed less than ``router_retry_s`` ago: do not wait on it."""
        return self._clock() < self._router_skip_until

    def note_router_down(self, exc: grpc.aio.AioRpcError) -> None:
        """Another RPC (the model list) failed as a router that is down or hung would.

        Only those codes: a refusal of that RPC alone (``PERMISSION_DENIED``: a
        sidecar token with ``rank`` and ``report`` but not ``read``, as ``k8s/``
        deploys it) says nothing about rankings."""
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            self._router_down(exc.code().name, rpc_detail(exc))

    def note_router_ok(self) -> None:
        """Another RPC (outcome delivery) reached the router: stop skipping it."""
        self.router_ok = True
        self._router_skip_until = 0.0

    @property
    def refreshes_in_flight(self) -> int:
        return len(self._refreshes)

    @property
    def cache_size(self) -> int:
        return len(self._cache)


#: Sorts under which the order is about speed: ``sort: ttft`` and load balancing.
_SPEED_SORTS = frozenset({router_pb2.SORT_BY_UNSPECIFIED, router_pb2.SORT_BY_TTFT})


def speed_ordered(prefs: router_pb2.RoutingPreferences) -> bool:
    """The ranking for ``prefs`` is ordered by TTFT (``sort: ttft``, or load balancing
    weighted by it) and no explicit ``order`` overrides it: the case where this
    sidecar's own view of an endpoint's speed (a slow start, a ranking led by an
    unmeasured endpoint) is a reason to reorder or refresh sooner."""
    return not prefs.order and prefs.sort in _SPEED_SORTS


#: Strategies whose leading routes carry draw weights (see RankedEndpoint.weight).
_WEIGHTED = frozenset({"load_balance", "sort"})


def _with_peer_p95(routes: tuple[Route, ...]) -> tuple[Route, ...]:
    """Give the routes without a suggested hedge delay the largest one of the ranking."""
    known = [r.hedge_after_s for r in routes if r.hedge_after_s is not None]
    if not known or len(known) == len(routes):
        return routes
    peer = max(known)
    return tuple(
        r if r.hedge_after_s is not None else replace(r, peer_hedge_after_s=peer) for r in routes
    )


def _suggested_s(ep: router_pb2.RankedEndpoint, field_name: str) -> float | None:
    """An optional suggested duration in ms, as seconds; None when unset or out of bounds."""
    if not ep.HasField(field_name):
        return None
    ms = getattr(ep, field_name)
    if not (0 < ms <= MAX_FIRST_TOKEN_TIMEOUT_MS):  # also refuses NaN
        return None
    return float(ms) / 1000.0


def _exploration_weight(ep: router_pb2.RankedEndpoint) -> float:
    """The router's exploration weight, in (0, 1]; 1 when unset or out of range."""
    if not ep.HasField("exploration_weight"):
        return 1.0
    w = ep.exploration_weight
    return float(w) if 0 < w <= 1 else 1.0  # also refuses NaN


def _pick_explored(pool: list[Route], rng: random.Random) -> Route:
    """One explorable route, in proportion to its exploration weight (uniform when equal)."""
    return weighted_choice(pool, [r.exploration_weight for r in pool], rng)


def _route_weight(route: Route) -> float:
    """A weighted route's load-balance weight (``redraw`` only draws routes that have one)."""
    assert route.weight is not None
    return route.weight


def no_eligible_message(model: str, excluded: list[dict[str, Any]]) -> str:
    """The router's FAILED_PRECONDITION text (``router_service/grpc_api.py``), from the catalog.

    An app reads the same 400 whether the router or the fallback catalog found
    that no endpoint passes the request's hard filters (``tests/sidecar`` checks
    the two against each other).
    """
    reasons = "; ".join(
        f"{as_json(str(EndpointKey(model, e['provider'])))}: {e['reason']['code']}"
        for e in excluded
    )
    return f"no endpoint of {as_json(model)} satisfies the preferences ({reasons})"


def _caller_error(exc: grpc.aio.AioRpcError, pref_params: Mapping[str, str] | None) -> RequestError:
    detail = exc.details() or exc.code().name
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return RequestError(detail, "model", 404, "model_not_found")
    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
        return RequestError(detail, "provider", 400, "no_eligible_provider")
    path = detail.split(": ", 1)[0]  # the router's messages start with the proto path
    if path.startswith("preferences."):
        return invalid_preferences(PreferencesError(path, detail.split(": ", 1)[1]), pref_params)
    return RequestError(detail, "provider", 400, "invalid_routing_preferences")
