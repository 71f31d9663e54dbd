"""The fallback loop and the assembly of the app's response.

For one request: get the ranked routes, keep only what the request allows
(ZDR enforced again here, whatever the ranking source said), and try them in
order within ``max_attempts`` and ``request_deadline_s``. A retriable failure
before any byte reached the app moves on; after the first byte there is no
silent retry. Every attempt is measured, reported (queued, never awaited) and
shown in the response's ``routing`` object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from router_common.domain import ErrorClass
from router_common.pb import router_pb2
from router_common.routing.filters import hard_filter
from router_common.routing.order import kept_without_fallbacks
from sidecar.config import SidecarSettings
from sidecar.hedging import Hedger
from sidecar.keys import ProviderKeys
from sidecar.lean_server import LeanStreamResponse
from sidecar.metrics import SidecarMetrics
from sidecar.model_fallback import (
    Leg,
    RequestPlan,
    allot,
    chain_summary,
    fallbacks_available,
    rank_models,
)
from sidecar.preferences import ParsedRequest, preferences_summary
from sidecar.ranking_client import Ranking, RankingClient, Route
from sidecar.redaction import KeyRedactor
from sidecar.request_id import HEADER as REQUEST_ID_HEADER
from sidecar.request_id import REQUEST_ID
from sidecar.spend import charge, request_cost
from sidecar.streaming import (
    AppGone,
    SSEScanner,
    StreamStart,
    read_until_first_token,
    relay,
    release_upstream,
)
from sidecar.timeouts import (
    AttemptTimeout,
    FirstTokenTimeout,
    first_token_timeout,
    parse_provider_timeouts,
    response_timeout,
    slow_start_after,
)
from sidecar.transport import UpstreamResponse, UpstreamTransport
from sidecar.upstream import (
    AttemptRecord,
    UpstreamError,
    classify_exception,
    classify_status,
    estimate_output_tokens,
    failure_text,
    parse_retry_after,
    read_error_body,
    short_here,
    upstream_error_message,
    upstream_headers,
    usage_count,
    usage_object,
)

log = logging.getLogger("sidecar.proxy")

#: Set on an aiohttp request whose app went away mid-answer (logged and counted as 499).
CLIENT_GONE: web.RequestKey[bool] = web.RequestKey("router_client_gone", bool)

#: Why an attempt was ended by the sidecar's own shutdown (no evidence about the provider).
SHUTDOWN_TEXT = "the sidecar is shutting down"
SHUTDOWN_MESSAGE = f"{SHUTDOWN_TEXT}; retry the request"


def _uncancel() -> None:
    """Consume the cancellation that ended the shutdown grace, so the handler can answer."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


#: (provider, model) of a stream once committed: the access line names them even when
#: the app leaves mid-stream (then no response returns to read the headers from).
SERVED_BY: web.RequestKey[tuple[str, str]] = web.RequestKey("router_served_by", tuple)

#: The error class of a stream that broke after its first token (``rec.error_class``'s
#: value): its status stayed 200, the headers having gone, so the access line names it.
STREAM_ERROR: web.RequestKey[str] = web.RequestKey("router_stream_error", str)

#: orjson: the request body is re-encoded on every attempt and the routing object
#: on every answer; it is several times faster than the stdlib here, and emits
#: compact UTF-8 (no ASCII escaping) as the stdlib encoder used to be told to.
_dumps = orjson.dumps


def error_body(
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The OpenAI error shape: ``{"error": {message, type, param, code}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}, **extra}


class Proxy:
    """Runs requests through the ranked providers. One per sidecar."""

    def __init__(
        self,
        settings: SidecarSettings,
        transport: UpstreamTransport,
        ranking: RankingClient,
        metrics: SidecarMetrics,
        report: Callable[[router_pb2.Outcome], object],
        keys: ProviderKeys,
        redactor: KeyRedactor,
        report_urgently: Callable[[router_pb2.Outcome], int] | None = None,
    ) -> None:
        self._s = settings
        #: Carries every upstream POST (sidecar/transport.py: the lean client or aiohttp's).
        self._transport = transport
        self._ranking = ranking
        self._m = metrics
        self._report = report
        #: Sends an outcome at once and returns its delivery ticket (OutcomeReporter.submit
        #: with urgent=True); None: every outcome goes through ``report``.
        self._report_urgently = report_urgently
        #: Keys read from the environment once (a process's environment does not
        #: change under it), and which providers have none.
        self._keys = keys
        #: The one key-removal rule, applied to every byte that leaves (see redaction.py).
        self._redact = redactor
        self.hedger = Hedger(
            settings,
            on_hedge=self._count_hedge,
            on_race=self._count_race,
            on_slow=lambda model, provider: self._ranking.cooldowns.slow(
                model, provider, settings.slow_start_cooldown_s
            ),
        )
        #: Set when the shutdown grace is over and in-flight requests are cancelled: a
        #: cancellation then means "end this request with an error the app can read"
        #: (a stream's error event and [DONE], else a 503), not "the app left".
        self.shutting_down = False
        #: The operator's per-provider first-token timeouts, seconds (see timeouts.py).
        self._provider_timeouts = parse_provider_timeouts(settings.provider_first_token_timeouts)

    # -- planning ------------------------------------------------------------

    def started_at(self) -> float:
        """Now on this node's wall clock, for an attempt's ``started_at``; the outcome
        reporter puts it on the router's clock when it queues the outcome (the router
        judges and buckets outcomes by its own clock: sidecar/router_clock.py)."""
        return self._ranking.router_clock.wall()

    def plan(self, req: ParsedRequest, ranking: Ranking) -> tuple[list[Route], list[str]]:
        """The routes that may be tried, in order, and the providers skipped for want of a key.

        Cooldowns applied, hard filters re-checked (``allot`` bounds the attempts). The hard filters
        are checked again whatever the ranking's source (a cached or stale
        ranking, a router of another version): they are guarantees, and
        checking them costs nothing for requests that set none. A provider
        whose key variable is unset here is no attempt: it is listed in
        ``routing.skipped`` and the next one takes its place.
        """
        routes = self._ranking.cooldowns.apply(req.model, ranking.routes)
        filters = req.filters
        if filters.active:
            routes = [
                r
                for r in routes
                if hard_filter(
                    filters,
                    r.provider,
                    r.zero_data_retention,
                    r.input_price_per_million,
                    r.output_price_per_million,
                )
                is None
            ]
        keys = self._keys
        if ranking.source == "router":
            keys.note(req.model, ((r.provider, r.api_key_env) for r in ranking.routes))
        skipped: list[str] = []
        if keys.missing:
            skipped = [r.provider for r in routes if r.provider in keys.missing]
            if skipped:
                routes = [r for r in routes if r.provider not in keys.missing]
        prefs = req.preferences
        if prefs.HasField("allow_fallbacks") and not prefs.allow_fallbacks:
            routes = routes[: kept_without_fallbacks([r.provider for r in routes], prefs.order)]
        return routes, skipped

    async def request_plan(self, req: ParsedRequest) -> RequestPlan:
        """Every model's ranked, filtered routes, and the attempts in order (bounded)."""
        if req.models:
            ranked, unranked = await rank_models(self._ranking, req)
        else:
            ranking = self._ranking.cached(req) or await self._ranking.rank_uncached(req)
            ranked, unranked = [(req, ranking)], []
        legs = []
        for leg_req, ranking in ranked:
            routes, skipped = self.plan(leg_req, ranking)
            legs.append(Leg(leg_req, ranking, routes, skipped))
        plan = RequestPlan(req, legs, unranked)
        plan.attempts = allot(legs, self._s.max_attempts)
        return plan

    def routing_object(
        self,
        plan: RequestPlan,
        records: list[AttemptRecord],
        serving: Leg | None,
        provider: str | None,
        upstream_model: str | None = None,
    ) -> dict[str, Any]:
        """The ``routing`` object: the router's metadata plus what happened here.

        The metadata is the ranking of ``model``: the model that served, or,
        when none did, the first model that had an eligible provider.
        """
        leg = serving or plan.legs[0]
        ranking = leg.ranking
        out = dict(ranking.metadata)
        out["source"] = ranking.source
        out["model"] = leg.req.model
        if plan.req.models:
            out.update(chain_summary(plan))
        out["preferences"] = _summary_of(plan.req)
        out["planned_order"] = [r.provider for r in leg.routes[: leg.take]]
        out["provider"] = provider
        if upstream_model is not None:
            out["upstream_model"] = upstream_model
        out["attempts"] = [r.to_json() for r in records]
        chain = bool(plan.req.models)
        skipped = [
            {"provider": p, "reason": "api_key_unset", **({"model": lg.req.model} if chain else {})}
            for lg in plan.legs
            for p in lg.skipped
        ]
        if skipped:
            out["skipped"] = skipped
        out["fallbacks_available"] = fallbacks_available(
            plan, {(r.model, r.provider) for r in records}
        )
        out["cost_usd"] = request_cost(records)
        return out

    # -- bookkeeping ---------------------------------------------------------

    def _count_hedge(self, result: str, cancelled_cost_usd: float) -> None:
        self._m.hedges.labels(result).inc()
        if cancelled_cost_usd > 0:
            self._m.hedge_cancelled_cost.inc(cancelled_cost_usd)

    def _count_race(self, result: str, closed_cost_usd: float) -> None:
        self._m.exploration_races.labels(result).inc()
        if closed_cost_usd > 0:
            self._m.exploration_race_cost.inc(closed_cost_usd)

    def _finish_attempt(self, req: ParsedRequest, rec: AttemptRecord) -> None:
        """Metrics, local cooldown and the outcome report for one finished attempt."""
        self._m.count_attempt(rec.provider, rec.error_class.value)
        if rec.ttft_ms is not None:
            self._m.observe_upstream_ttft(rec.provider, rec.ttft_ms / 1000.0)
        urgent = rec.evidence
        if rec.status == "ok":
            self._ranking.cooldowns.succeed(req.model, rec.provider)
        elif rec.error_class.counts_against_endpoint and rec.report:
            seconds = self._s.cooldown_s
            if rec.retry_after_s is not None:
                seconds = min(max(rec.retry_after_s, seconds), self._s.max_cooldown_s)
            # its first failure here: news to the router (later ones add little)
            urgent = urgent or not self._ranking.cooldowns.failing(req.model, rec.provider)
            self._ranking.cooldowns.fail(req.model, rec.provider, seconds)
        if not rec.report:
            return
        if urgent and self._report_urgently is not None:
            ticket = self._report_urgently(rec.to_outcome(req.model))
            if rec.evidence:
                self._ranking.expire_when_delivered(req, ticket)
        else:
            self._report(rec.to_outcome(req.model))

    def _observe_added(self, rec: AttemptRecord, t_start: float) -> None:
        """The sidecar's overhead on this stream's first token, as the app gets it now."""
        if rec.ttft_ms is not None:
            app_ttft = time.perf_counter() - t_start
            self._m.added_latency.observe(max(0.0, app_ttft - rec.ttft_ms / 1000.0))

    def _key_for(self, route: Route, rec: AttemptRecord) -> tuple[bool, str | None]:
        """The provider's key from this process's environment (False: not set here).

        The plan already skips providers known to lack a key (``skipped``); this
        catches one the key registry had no room to note, and a hedge's backup.
        """
        if not route.api_key_env:
            return True, None
        key = self._keys.key(route.api_key_env)
        if not key:
            rec.finish_error(ErrorClass.AUTH, f"API key variable {route.api_key_env} is not set")
            rec.report = False  # our misconfiguration, not the endpoint's
            return False, None
        return True, key

    def _body_for(self, req: ParsedRequest, route: Route) -> bytes:
        body = dict(req.body)
        body["model"] = route.upstream_model
        if req.stream:
            opts = dict(body.get("stream_options") or {})
            opts["include_usage"] = True  # exact output token counts for throughput
            body["stream_options"] = opts
        return _dumps(body)

    # -- the request -----------------------------------------------------------

    async def handle(
        self, request: web.Request, req: ParsedRequest, t_start: float
    ) -> web.StreamResponse:
        """Answer one validated chat completion request (RequestError propagates as 4xx)."""
        plan = await self.request_plan(req)
        attempts = plan.attempts
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._s.request_deadline_s
        records: list[AttemptRecord] = []
        last_error: UpstreamError | None = None
        hedge = self.hedger.enabled(req)
        if hedge:
            self.hedger.budget.note_request()
        hedged: set[int] = set()  # plan positions already tried as a hedge's backup
        for i, (leg, route) in enumerate(attempts):
            if i in hedged:
                continue
            if loop.time() >= deadline:
                break
            if records:
                self._m.fallbacks.inc()
            leg_req = leg.req
            rec = AttemptRecord(route.provider, route.upstream_model, self.started_at())
            rec.model = leg_req.model
            records.append(rec)
            ok, key = self._key_for(route, rec)
            if not ok:
                self._finish_attempt(leg_req, rec)
                continue
            try:
                if req.stream:
                    race = i == 0 and self.hedger.races(
                        leg_req, route, leg.ranking.metadata.get("exploration_provider")
                    )
                    if hedge or race:
                        opened, rec, route, started = await self.hedger.open(
                            self,
                            leg_req,
                            route,
                            _same_leg(attempts, i),
                            key,
                            rec,
                            deadline,
                            records,
                            race,
                        )
                        hedged.update(range(i + 1, i + 1 + started))
                        for r in records:  # the backups' records: this leg's model
                            r.model = r.model or leg_req.model
                    else:
                        opened = await self._open_stream(
                            leg_req, route, key, rec, deadline, len(records)
                        )
                    if isinstance(opened, tuple):
                        start, answer = opened
                        return await self._commit_stream(
                            request, plan, leg, route, records, rec, start, answer, t_start
                        )
                    last_error = opened
                else:
                    answered = await self._call_once(leg_req, route, key, rec, deadline)
                    if isinstance(answered, dict):
                        self._cost_answer(leg, route, rec, answered)
                        self._finish_attempt(leg_req, rec)
                        upstream_model = answered.get("model")
                        answered["model"] = leg_req.model
                        answered["routing"] = self.routing_object(
                            plan,
                            records,
                            leg,
                            route.provider,
                            upstream_model if isinstance(upstream_model, str) else None,
                        )
                        return self._json(
                            200, answered, route.provider, len(records), model=leg_req.model
                        )
                    last_error = answered
            except asyncio.CancelledError:
                if self.shutting_down:  # nothing reached the app yet: a 503 it can read
                    for r in records:  # this attempt, and a hedge's or race's other one
                        if r.status == "pending":
                            r.finish_error(ErrorClass.CLIENT_ERROR, SHUTDOWN_TEXT, r.http_status)
                            r.report = False  # the sidecar's doing: no evidence about it
                            self._finish_attempt(leg_req, r)
                    _uncancel()
                    body = error_body(
                        SHUTDOWN_MESSAGE,
                        "api_error",
                        code="sidecar_shutting_down",
                        routing=self.routing_object(plan, records, leg, None, None),
                    )
                    return self._json(503, body, None, len(records))
                if rec.status == "pending":  # the app left while this attempt ran
                    rec.finish_error(ErrorClass.CLIENT_ERROR, "app disconnected", 499)
                    self._finish_attempt(leg_req, rec)
                request[CLIENT_GONE] = True
                raise
            self._finish_attempt(leg_req, rec)
            if not rec.retriable:
                break
        return self._all_failed(plan, records, last_error)

    def _cost_answer(
        self, leg: Leg, route: Route, rec: AttemptRecord, answered: dict[str, Any]
    ) -> None:
        """Cost a non-streaming answer from its usage; ``usage.cost`` gets the figure."""
        usage = answered.get("usage")
        usage = usage if isinstance(usage, dict) else None
        exact_in = usage_count(usage.get("prompt_tokens")) if usage is not None else None
        exact_out = usage is not None and usage_count(usage.get("completion_tokens")) is not None
        total = charge(
            self._m,
            leg.req.model,
            route,
            rec,
            exact_in,
            leg.req.estimated_input_tokens,
            exact_out,
        )
        if total is None:
            return
        if usage is None:
            # The provider sent no usage: the app still reads usage (and usage.cost) as
            # OpenAI's API promises it, with the counts the cost was computed from.
            usage = answered["usage"] = usage_object(
                leg.req.estimated_input_tokens, rec.output_tokens
            )
        usage["cost"] = round(total, 12)

    def _json(
        self,
        status: int,
        body: dict[str, Any],
        provider: str | None,
        attempts: int,
        retry_after: str | None = None,
        model: str | None = None,
        final: bool = False,
    ) -> web.Response:
        headers = {"x-router-attempts": str(attempts)}
        if provider:
            headers["x-router-provider"] = provider
        if model:
            headers["x-router-model"] = model
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        if final:
            # OpenAI's SDKs obey this header before their own rule (retry every 5xx twice).
            headers["x-should-retry"] = "false"
        return web.Response(
            status=status,
            body=self._redact.scrub(_dumps(body)),
            content_type="application/json",
            headers=headers,
        )

    def _all_failed(
        self,
        plan: RequestPlan,
        records: list[AttemptRecord],
        last_error: UpstreamError | None,
    ) -> web.Response:
        """No attempt succeeded: one status by a fixed rule, whichever provider came last.

        A caller mistake the provider reported (400/404/422) is passed on as it
        is (it would fail the same way anywhere). Otherwise: 429 when every
        attempt was rate limited (``Retry-After``: the smallest one given, at most
        ``max_cooldown_s``, after which this sidecar calls the provider again), 504
        when every attempt timed out, 503 when no provider could be tried at all,
        502 for any other mix (a provider refusing the sidecar's key included).

        A 502/504 after more than one attempt, and the 503, say ``x-should-retry:
        false``: the sidecar already fell back through its attempt limit, and an
        OpenAI SDK retrying it (twice by default) would call every failing provider
        again, tripling the upstream calls per app call; a 503 with nothing to try
        answers the same until the sidecar's keys change. A single attempt (a model
        with one eligible provider) and a 429 (its ``Retry-After`` paces the SDK)
        keep the SDK's own retries.
        """
        routing = self.routing_object(plan, records, None, None)
        skipped = [p for leg in plan.legs for p in leg.skipped]
        last = records[-1] if records else None
        retry_after: str | None = None
        if last is not None and last.error_class == ErrorClass.CLIENT_ERROR and last_error:
            status = last_error.status
            try:
                parsed = orjson.loads(last_error.body)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                body = parsed
            else:
                body = error_body(
                    upstream_error_message(last_error.body, status),
                    "invalid_request_error",
                    code=str(status),
                )
            body["routing"] = routing
            return self._json(status, body, None, len(records))
        classes = {r.error_class for r in records}
        if not records:
            status, type_, code = 503, "api_error", "no_provider_available"
            msg = "no provider could be tried"
            if skipped:
                msg += f" (API key unset for: {', '.join(skipped)})"
            else:
                msg += " (routing filters or deadline)"
        elif classes == {ErrorClass.RATE_LIMITED}:
            status, type_, code = 429, "rate_limit_error", "all_providers_rate_limited"
            msg = "every provider is rate limited"
            waits = [r.retry_after_s for r in records if r.retry_after_s is not None]
            if waits:  # capped: this sidecar tries the provider again after its cooldown
                wait = min(min(waits), self._s.max_cooldown_s)
                retry_after = str(max(1, math.ceil(wait)))
        elif classes == {ErrorClass.TIMEOUT}:
            status, type_, code = 504, "api_error", "all_providers_timed_out"
            msg = "every provider timed out"
        else:
            status, type_, code = 502, "api_error", "all_providers_failed"
            msg = "every provider failed"
        if records:
            msg += ": " + "; ".join(f"{r.provider}: {r.error}" for r in records)
        body = error_body(msg, type_, code=code, routing=routing)
        final = status == 503 or (status != 429 and len(records) > 1)
        return self._json(status, body, None, len(records), retry_after, final=final)

    # -- non-streaming ---------------------------------------------------------

    async def _call_once(
        self, req: ParsedRequest, route: Route, key: str | None, rec: AttemptRecord, deadline: float
    ) -> dict[str, Any] | UpstreamError | None:
        """One non-streaming attempt; the parsed body on success, else the failure."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        limit = min(deadline, now + self._s.nonstream_timeout_s)
        whole = f"no complete answer within {limit - now:.3g}s"
        if deadline < now + self._s.nonstream_timeout_s:
            whole += " (the request deadline)"
        started = response_timeout(
            self._s, route, req.provider_timeouts, self._provider_timeouts or None
        )
        first_limit = limit if started is None else min(limit, loop.time() + started.seconds)
        got_headers = False
        try:
            async with asyncio.timeout_at(first_limit) as bound:
                resp = await self._transport.post(
                    route.chat_url,
                    self._body_for(req, route),
                    upstream_headers(key, False),
                    self._s.connect_timeout_s,
                )
                try:  # redirects are not followed: a chat POST that redirects is misconfigured
                    bound.reschedule(limit)  # answering: the whole-answer bound from here
                    got_headers = True
                    rec.http_status = resp.status
                    if resp.status != 200:
                        return await self._http_failure(resp, rec, route)
                    data = await resp.content.read(self._s.max_upstream_response_bytes + 1)
                    while not resp.content.at_eof() and len(data) <= (
                        self._s.max_upstream_response_bytes
                    ):
                        more = await resp.content.read(
                            self._s.max_upstream_response_bytes + 1 - len(data)
                        )
                        if not more:
                            break
                        data += more
                except asyncio.CancelledError:
                    resp.close()  # the app left: the provider stops generating now
                    raise
                finally:
                    resp.release()  # pooled when read to its end (after close: nothing)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            cls = classify_exception(exc, got_headers)
            if cls == ErrorClass.STREAM_ABORT:  # body broke off: same as a server error here
                cls = ErrorClass.SERVER_ERROR
            if started is not None and not got_headers and cls == ErrorClass.TIMEOUT:
                rec.finish_error(cls, _timeout_text("no response", started))
                rec.report = not started.requested  # the app's choice, not the endpoint's fault
                return None
            rec.finish_error(cls, failure_text(exc, cls, self._s.connect_timeout_s, whole))
            rec.report = not short_here(exc)
            return None
        if len(data) > self._s.max_upstream_response_bytes:
            rec.finish_error(ErrorClass.SERVER_ERROR, "upstream response too large")
            return None
        try:
            obj = orjson.loads(data)
        except ValueError:
            rec.finish_error(ErrorClass.SERVER_ERROR, "upstream sent invalid JSON")
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            rec.finish_error(ErrorClass.SERVER_ERROR, "upstream answer has no choices")
            return None
        usage = obj.get("usage")
        tokens = usage_count(usage.get("completion_tokens")) if isinstance(usage, dict) else None
        if tokens is None:  # no count from the provider: estimated from the answer's text
            tokens = estimate_output_tokens(obj["choices"])
        rec.finish_ok(tokens, None)
        return obj

    async def _http_failure(
        self, resp: UpstreamResponse, rec: AttemptRecord, route: Route
    ) -> UpstreamError:
        cls = classify_status(resp.status)
        if cls == ErrorClass.RATE_LIMITED:
            rec.retry_after_s = parse_retry_after(
                resp.headers.get("Retry-After"), date=resp.headers.get("Date")
            )
        body = self._redact.scrub(await read_error_body(resp, self._s.max_error_body_bytes))
        if cls == ErrorClass.AUTH:
            # The sidecar's key was refused: the app's own key is not in question,
            # so this must not reach it as a 401/403 its SDK would take as its own.
            detail = (
                f"provider {route.provider} rejected the sidecar's API key "
                f"({route.api_key_env or 'no key variable'}); "
                + upstream_error_message(body, resp.status)
            )
        else:
            detail = upstream_error_message(body, resp.status)
        rec.finish_error(cls, detail, resp.status)
        return UpstreamError(resp.status, body, resp.headers.get("Content-Type", ""))

    # -- streaming -------------------------------------------------------------

    async def _open_stream(
        self,
        req: ParsedRequest,
        route: Route,
        key: str | None,
        rec: AttemptRecord,
        deadline: float,
        attempt: int,
    ) -> tuple[StreamStart, web.StreamResponse] | UpstreamError | None:
        """Send the request and read to the first token, all within the first-byte deadline.

        On success, also the app's (unprepared) response: built while the
        provider works on its first token rather than after it arrives, and
        simply dropped if this attempt fails before then.
        """
        loop = asyncio.get_running_loop()
        wait = first_token_timeout(
            self._s, route, req.provider_timeouts, self._provider_timeouts or None
        )
        now = loop.time()
        limit = min(deadline, now + wait.seconds)
        # When the request's deadline comes first, the error names it, not a wait
        # it never reached ("no first token within 30s" after 10 s).
        cut = None if limit >= now + wait.seconds else limit - now
        got_headers = False
        resp: UpstreamResponse | None = None
        scanner = SSEScanner(
            req.model, req.wants_usage, self._redact.only(key), self._s.max_upstream_response_bytes
        )
        slow_after = slow_start_after(self._s, req, route)
        # One timer: the slow-start watch (a mark, nothing cut), then the wait's limit.
        waiting = FirstTokenTimeout(
            limit,
            None if slow_after is None else now + slow_after,
            None
            if slow_after is None
            else partial(
                self._ranking.cooldowns.slow,
                req.model,
                route.provider,
                self._s.slow_start_cooldown_s,
            ),
        )
        try:
            async with waiting:
                resp = await self._transport.post(
                    route.chat_url,
                    self._body_for(req, route),
                    upstream_headers(key, True),
                    self._s.connect_timeout_s,
                )
                got_headers = True
                rec.http_status = resp.status
                if resp.status != 200:
                    try:
                        return await self._http_failure(resp, rec, route)
                    finally:
                        resp.release()
                answer = _stream_answer(rec.provider, attempt, req.model)
                start = await read_until_first_token(resp, rec, scanner)
        except asyncio.CancelledError:
            if resp is not None:
                resp.close()  # the app left before the first token: stop the provider now
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            cls = classify_exception(exc, got_headers)
            if cls == ErrorClass.TIMEOUT and (got_headers or type(exc) is TimeoutError):
                msg = (
                    _timeout_text("no first token", wait)
                    if cut is None
                    else f"no first token within {cut:.3g}s (the request deadline)"
                )
                # A shorter wait the request chose is no evidence against the endpoint.
                rec.report = not wait.requested
            else:
                msg = failure_text(exc, cls, self._s.connect_timeout_s)
                if short_here(exc):
                    rec.report = False
            rec.finish_error(cls, msg, rec.http_status)
            if resp is not None:
                resp.close()
            return None
        if start is None:
            resp.close()
            return None
        if rec.ttft_ms is not None:
            rec.evidence = self._ranking.note_first_token(req, route, rec.ttft_ms / 1000.0)
        return start, answer

    async def _commit_stream(
        self,
        request: web.Request,
        plan: RequestPlan,
        leg: Leg,
        route: Route,
        records: list[AttemptRecord],
        rec: AttemptRecord,
        start: StreamStart,
        app: web.StreamResponse,
        t_start: float,
    ) -> web.StreamResponse:
        """First token in hand: send headers and held bytes, then relay; no retry from here.

        When the whole answer came with the first token (a fast or unpaced
        provider: [DONE] or the end already read), nothing is left to wait
        for: headers and answer leave in one send, then ``routing`` and the end
        of the body in a second (two instead of three). Between the two the task
        yields once: the streams whose first bytes arrived in the same turn of
        the event loop send theirs before this one builds its tail (cost,
        ``routing``) and does its bookkeeping (metrics, outcome, access line),
        which is work the app's first token does not need. At 32 unpaced streams
        the answers arrive together, and without the yield the last of a batch
        waited for every earlier one's tail and bookkeeping (bench/README.md 13i).
        """
        req = leg.req
        whole = start.eof or start.scanner.done
        request[SERVED_BY] = (rec.provider, req.model)
        # Every attempt made, as routing.attempts lists them: a hedge's or race's other
        # attempt may have started after this one (the header was built when it opened).
        app.headers["x-router-attempts"] = str(len(records))
        rid = request.get(REQUEST_ID)
        if rid is not None:
            app.headers[REQUEST_ID_HEADER] = rid
        try:
            await app.prepare(request)
            if not whole:
                if start.pending:
                    await app.write(start.pending)
                self._observe_added(rec, t_start)
            await relay(start, app, rec, self._s.chunk_timeout_s)
        except AppGone:
            request[CLIENT_GONE] = True
            self._cost_stream(leg, route, rec, start.scanner)
            self._finish_attempt(req, rec)
            return app
        except (ConnectionError, RuntimeError):  # app gone before the first write
            start.resp.close()
            rec.finish_error(ErrorClass.CLIENT_ERROR, "app disconnected", 499)
            request[CLIENT_GONE] = True
            self._finish_attempt(req, rec)
            return app
        except asyncio.CancelledError:  # the app left (relay() closed the upstream), or shutdown
            start.resp.close()
            # The attempt is costed either way (the provider bills what it sent). At shutdown
            # the sidecar ended it, so it is not reported to the router.
            shutdown = self.shutting_down
            if rec.status == "pending":
                text, status = (SHUTDOWN_TEXT, 200) if shutdown else ("app disconnected", 499)
                rec.finish_error(ErrorClass.CLIENT_ERROR, text, status, start.scanner.output_tokens)
                if shutdown:
                    rec.report = False
            self._cost_stream(leg, route, rec, start.scanner)
            self._finish_attempt(req, rec)
            if not shutdown:
                request[CLIENT_GONE] = True
                raise
            _uncancel()
            routing = self.routing_object(
                plan, records, leg, rec.provider, start.scanner.upstream_model
            )
            return await self._end_stream_at_shutdown(app, routing)
        app_left = False
        if whole:
            try:
                self._observe_added(rec, t_start)
                if start.pending:
                    await app.write(start.pending)
                await asyncio.sleep(0)  # other streams' first bytes before this one's tail
            except (ConnectionError, RuntimeError):  # the app left first (499); the provider
                app_left = True  # did answer: costed and reported as answered
                request[CLIENT_GONE] = True
            except asyncio.CancelledError:
                if not self.shutting_down:  # the app left: as during the last write below
                    request[CLIENT_GONE] = True
                    start.resp.close()
                    self._cost_stream(leg, route, rec, start.scanner)
                    self._finish_attempt(req, rec)
                    raise
                _uncancel()  # shutdown: the answer is whole, its tail follows at once
        scanner = start.scanner
        total = self._cost_stream(leg, route, rec, scanner)
        if rec.status == "ok" and scanner.usage_tokens is None:
            # The provider sent no usage: the app that asked for it gets the counts the
            # cost was computed from (the estimate of the input, the chunks counted).
            scanner.supply_usage(
                rec.input_tokens if rec.input_tokens is not None else req.estimated_input_tokens,
                rec.output_tokens,
            )
        if total is not None:
            scanner.set_usage_cost(round(total, 12))
        routing = self.routing_object(plan, records, leg, rec.provider, scanner.upstream_model)
        if rec.status == "ok":
            tail = scanner.final_chunks(routing)
        else:
            request[STREAM_ERROR] = rec.error_class.value
            final = error_body(
                f"upstream stream failed after it started: {rec.error}",
                "upstream_error",
                code=rec.error_class.value,
                routing=routing,
            )
            tail = scanner.final_chunks(None) + self._redact.scrub(
                b"data: " + _dumps(final) + b"\n\n"
            )
        try:
            if not app_left:
                await app.write_eof(tail + b"data: [DONE]\n\n")  # last chunk and end: one send
        except (ConnectionError, RuntimeError):
            if whole:  # the app left before its whole answer (499), the provider did answer
                request[CLIENT_GONE] = True
        except asyncio.CancelledError:  # the app left during the last write
            request[CLIENT_GONE] = True
            start.resp.close()
            self._finish_attempt(req, rec)
            raise
        self._finish_attempt(req, rec)  # bookkeeping once the app has its whole answer
        await release_upstream(start.resp)
        return app

    async def _end_stream_at_shutdown(
        self, app: web.StreamResponse, routing: dict[str, Any]
    ) -> web.StreamResponse:
        """The shutdown grace is over mid-stream: an error event and [DONE], not a cut body.

        A body cut without its chunked terminator reads to SDKs as a network
        error at best and as a complete answer at worst; an OpenAI-style error
        event says the answer is incomplete and why.
        """
        final = error_body(
            f"the answer is incomplete: {SHUTDOWN_TEXT}",
            "api_error",
            code="sidecar_shutting_down",
            routing=routing,
        )
        with contextlib.suppress(ConnectionError, RuntimeError):  # the app left meanwhile
            await app.write_eof(
                self._redact.scrub(b"data: " + _dumps(final) + b"\n\n") + b"data: [DONE]\n\n"
            )
        return app

    def _cost_stream(
        self, leg: Leg, route: Route, rec: AttemptRecord, scanner: SSEScanner
    ) -> float | None:
        """Cost a committed stream from its usage chunk, or from what was counted."""
        return charge(
            self._m,
            leg.req.model,
            route,
            rec,
            scanner.usage_prompt_tokens,
            leg.req.estimated_input_tokens,
            scanner.usage_tokens is not None,
        )


#: ``routing.preferences`` by the request's serialized preferences: most requests
#: share a handful (often none set), and the summary is only ever serialized.
_SUMMARIES: dict[bytes, dict[str, Any]] = {}


def _summary_of(req: ParsedRequest) -> dict[str, Any]:
    key = req.cache_key[1]
    summary = _SUMMARIES.get(key)
    if summary is None:
        summary = preferences_summary(req.preferences)
        if len(_SUMMARIES) < 256:  # bounded: callers choose their preferences
            _SUMMARIES[key] = summary
    return summary


def _stream_answer(provider: str, attempt: int, model: str) -> web.StreamResponse:
    """The app's SSE response for a stream of ``model`` served by ``provider`` on ``attempt``."""
    return _OneWriteStreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "x-router-provider": provider,
            "x-router-model": model,
            "x-router-attempts": str(attempt),
        },
    )


class _OneWriteStreamResponse(LeanStreamResponse):
    """A stream response whose headers leave with the first body bytes, in one send.

    By the time the sidecar commits to a provider it already holds the first
    token, so sending headers and token separately would put two loopback
    syscalls (about 0.1 ms each here) on the app's time to first token.
    ``_send_headers_immediately`` is aiohttp's own switch for this (web.Response
    sets it to False); a test checks the headers and first chunk arrive together.
    On the lean front (``LeanStreamResponse``) headers always leave with the first bytes.
    """

    _send_headers_immediately = False


def _timeout_text(what: str, wait: AttemptTimeout) -> str:
    why = " (providerTimeouts)" if wait.requested else ""
    return f"{what} within {wait.seconds:g}s{why}"


def _same_leg(attempts: list[tuple[Leg, Route]], i: int) -> list[Route]:
    """The routes after attempt ``i`` that serve its model: what a hedge may start."""
    leg = attempts[i][0]
    out = []
    for other, route in attempts[i + 1 :]:
        if other is not leg:
            break
        out.append(route)
    return out
