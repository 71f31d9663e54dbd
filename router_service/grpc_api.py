"""The router.v1.Router gRPC servicer: thin translation onto RouterCore.

Every handler maps domain errors to precise status codes (NOT_FOUND naming the
model, INVALID_ARGUMENT naming the field) and counts itself by method and
status for Prometheus. StreamOutcomes ingests message by message so a sidecar's
long-lived stream never buffers more than one batch here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc._cython.cygrpc import ExecuteBatchError  # raised by a write to a closed call

from router_common.domain import EndpointKey
from router_common.json_text import as_json
from router_common.limits import MAX_OUTCOMES_PER_BATCH, MAX_REJECTIONS_REPORTED
from router_common.pb import router_pb2, router_pb2_grpc
from router_service.auth import (
    METHOD_SCOPES,
    Authenticator,
    Caller,
    Denied,
    certificate_names,
    one_authorization,
)
from router_service.callers import CallerLedger, CallerLimitsConfig
from router_service.core import RouterCore, UnknownModelError
from router_service.figures import best_p50s
from router_service.ingest import BatchRefused, BatchResult, Ingestor, IngestPacing
from router_service.ranking import RankingInputError
from router_service.rpc_guard import LogLimiter, Malformed, current_caller
from router_service.wire import (
    endpoint_health,
    endpoint_metrics,
    endpoint_template,
    proto_path,
    rank_response,
    routing_request,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class RpcCounter:
    """Completed RPCs by (method, status code name), read by the /metrics collector."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def observe(self, method: str, code: grpc.StatusCode) -> None:
        self.counts[(method, code.name)] += 1


def _counted(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Admit the call (parseable request, known caller with the method's scope),
    then record its final status code; context.abort raises, so catch and re-raise."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: RouterServicer, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            await self._admit(name, request, context)
            response = await method(self, request, context)
        except grpc.aio.AbortError:
            self.rpc_counter.observe(name, context.code() or grpc.StatusCode.UNKNOWN)
            raise
        except asyncio.CancelledError:
            self.rpc_counter.observe(name, grpc.StatusCode.CANCELLED)
            raise
        except ExecuteBatchError:
            # A write to the call failed: the caller left mid-call (gRPC itself then
            # ignores the error, and logs it when the caller had not left). The caller's
            # doing, not the router's: no INTERNAL, no ERROR traceback it could repeat.
            self.rpc_counter.observe(name, grpc.StatusCode.CANCELLED)
            raise
        except Exception:
            self.rpc_counter.observe(name, grpc.StatusCode.INTERNAL)
            log.exception("rpc failed", extra={"method": name})
            raise
        self.rpc_counter.observe(name, grpc.StatusCode.OK)
        return response

    return wrapper


class _StreamTotals:
    """What one outcome call has applied so far, across its batches."""

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected = 0
        self.batches = 0
        self.duplicates = 0
        #: Outcomes of this call so far, duplicate batches' included: a
        #: RejectedOutcome.index is a position in what the sender sent.
        self.index = 0
        self.rejections: list[tuple[int, object]] = []
        self.applied_sequences: list[int] = []

    def add(self, batch: BatchResult, outcomes: int) -> None:
        self.batches += 1
        self.index += outcomes
        if batch.sequence is not None and len(self.applied_sequences) < MAX_REJECTIONS_REPORTED:
            self.applied_sequences.append(batch.sequence)
        if batch.duplicate:
            self.duplicates += 1
            return
        self.accepted += batch.result.accepted
        self.rejected += batch.result.rejected
        room = MAX_REJECTIONS_REPORTED - len(self.rejections)
        self.rejections.extend(batch.result.rejections[:room])

    def ack(self) -> router_pb2.OutcomeAck:
        ack = router_pb2.OutcomeAck(
            accepted=self.accepted,
            rejected=self.rejected,
            duplicate_batches=self.duplicates,
            applied_sequences=self.applied_sequences,
        )
        for index, rejection in self.rejections:
            ack.rejections.add(index=index, reason=str(rejection))
        return ack


class RouterServicer(router_pb2_grpc.RouterServicer):
    """Implements router.v1.Router over a RouterCore."""

    def __init__(
        self,
        core: RouterCore,
        on_ingested: Callable[[], None],
        authenticator: Authenticator | None = None,
        ledger: CallerLedger | None = None,
        pacing: IngestPacing | None = None,
    ) -> None:
        self.core = core
        self.rpc_counter = RpcCounter()
        self.authenticator = authenticator or Authenticator(None, mtls=False)
        self.ledger = ledger or CallerLedger(CallerLimitsConfig(), core.clock)
        #: Applies batches; calls on_ingested after each accepted one (the app
        #: coalesces quantile refreshes).
        self.ingestor = Ingestor(core, self.ledger, on_ingested, pacing)
        self.log_limiter = LogLimiter()
        self._template_version: str | None = None
        self._template_cache: dict[EndpointKey, router_pb2.RankedEndpoint] = {}

    @_counted
    async def RankProviders(self, request, context):
        self.ingestor.ranking_served()
        try:
            routing = routing_request(request, self.core.catalog.providers)
            result = self.core.rank(routing)
        except UnknownModelError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except RankingInputError as exc:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"{proto_path(exc.field)}: {exc.message}"
            )
        if not result.ranked:
            reasons = "; ".join(
                f"{as_json(str(e.endpoint.key))}: {e.reason.code}" for e in result.excluded
            )
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"no endpoint of {as_json(request.model)} satisfies the preferences ({reasons})",
            )
        return rank_response(
            result, request.model, self.core.catalog_version, self.core.clock(), self._templates()
        )

    def _templates(self) -> dict[EndpointKey, router_pb2.RankedEndpoint]:
        """Prebuilt catalog parts of ranked entries, rebuilt when the catalog changes."""
        version = self.core.catalog_version
        if self._template_version != version:
            self._template_cache = {
                e.key: endpoint_template(e)
                for m in self.core.catalog.models.values()
                for e in m.endpoints
            }
            self._template_version = version
        return self._template_cache

    async def _admit(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        """Refuse an unknown caller, a missing scope or a malformed request (aborts).

        The caller first: README promises UNAUTHENTICATED for a missing or wrong
        token, and a caller without one learns nothing about what it sent (junk
        from anyone was INVALID_ARGUMENT and logged as a malformed request)."""
        caller = await self._identify(method, context)
        if caller is None:  # refused (context.abort raised; this is for the type checker)
            return
        if isinstance(request, Malformed):
            await self._abort_malformed(method, request, context)
        current_caller.set(caller)

    async def _identify(
        self, method: str, context: grpc.aio.ServicerContext, total: _StreamTotals | None = None
    ) -> Caller | None:
        """The call's caller, holding the method's scope under the current callers;
        otherwise abort with UNAUTHENTICATED or PERMISSION_DENIED (a stream's abort
        lists the batches it applied)."""
        metadata = context.invocation_metadata() or ()
        try:
            sent = [v for k, v in metadata if k == "authorization"]
            authorization = one_authorization(sent) if self.authenticator.enabled else None
            names = certificate_names(context.auth_context()) if self.authenticator.mtls else []
            caller = self.authenticator.identify(authorization, names, context.peer())
            self.authenticator.require(caller, METHOD_SCOPES[method], method)
        except Denied as exc:
            code = (
                grpc.StatusCode.UNAUTHENTICATED
                if exc.unauthenticated
                else grpc.StatusCode.PERMISSION_DENIED
            )
            self.log_limiter.warning(
                log, "call refused", f"{method}:{code.name}", method=method, why=str(exc)
            )
            if total is not None:
                await self._abort_stream(context, total, code, str(exc))
            await context.abort(code, str(exc))
            return None
        return caller

    async def _abort_malformed(
        self, method: str, request: Malformed, context: grpc.aio.ServicerContext, extra: str = ""
    ) -> None:
        self.log_limiter.warning(
            log, "malformed request", f"{method}:{request.cause}", method=method
        )
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{request.cause}{extra}")

    @_counted
    async def RecordOutcome(self, request, context):
        await self._check_size(request, "call", context)
        total = _StreamTotals()
        await self._apply(request, total, context)
        return total.ack()

    @_counted
    async def StreamOutcomes(self, request_iterator: AsyncIterator, context):
        total = _StreamTotals()
        idle = self.idle_stream_timeout_s
        loop = asyncio.get_running_loop()
        answer_by = self._answer_by(context, loop.time())
        # A caller can hold a stream open as long as its connection lives (up to an
        # hour): when the callers change (a token revoked, a scope removed) it is
        # admitted again before its next batch, so revocation stops it too.
        generation = self.authenticator.generation
        iterator = request_iterator.__aiter__()
        while True:
            wait = idle if answer_by is None else min(idle, answer_by - loop.time())
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    message = await anext(iterator)
            except StopAsyncIteration:
                break
            except TimeoutError:
                if wait < idle:
                    await self._abort_at_deadline(context, total)
                await self._abort_stream(
                    context,
                    total,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no message for {idle:g} s; the stream is closed",
                )
            if isinstance(message, Malformed):
                self.log_limiter.warning(
                    log,
                    "malformed request",
                    f"StreamOutcomes:{message.cause}",
                    method="StreamOutcomes",
                )
                await self._abort_stream(
                    context, total, grpc.StatusCode.INVALID_ARGUMENT, message.cause
                )
            if self.authenticator.generation != generation:
                generation = self.authenticator.generation
                caller = await self._identify("StreamOutcomes", context, total)
                if caller is not None:
                    current_caller.set(caller)
            await self._check_size(message, "message", context, total)
            if answer_by is None:
                await self._apply(message, total, context)
                continue
            try:
                # An admitted batch is applied in full however long this waits
                # (Ingestor.apply shields it); only the answer stops waiting.
                async with asyncio.timeout(max(answer_by - loop.time(), 0.0)):
                    await self._apply(message, total, context)
            except TimeoutError:
                await self._abort_at_deadline(context, total)
        return total.ack()

    #: A StreamOutcomes call that sends nothing for this long is ended.
    idle_stream_timeout_s: float = 60.0
    #: A StreamOutcomes call with a deadline is ended by the router this long
    #: before it (at most a quarter of the time it had when it arrived).
    deadline_margin_s: float = 0.5

    def _answer_by(self, context: grpc.aio.ServicerContext, now: float) -> float | None:
        """The loop time by which a stream with a deadline must be answered, else None.

        Why: at the caller's deadline its own gRPC library ends the call with a
        DEADLINE_EXCEEDED of its making, without the router's trailing metadata,
        so a sender never learned which batches had been applied (the proto
        promises `router-applied-sequences` for a deadline). Answering a little
        before it, the router's DEADLINE_EXCEEDED and its list arrive in time."""
        remaining = context.time_remaining()
        if remaining is None:
            return None
        return now + remaining - min(self.deadline_margin_s, remaining / 4)

    async def _abort_at_deadline(self, context, total: _StreamTotals) -> None:
        await self._abort_stream(
            context,
            total,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "the call's deadline is due: the router ends the stream just before it,"
            " so this answer arrives; resend the batches not listed as applied",
        )

    async def _apply(self, message, total: _StreamTotals, context) -> None:
        try:
            batch = await self.ingestor.apply(current_caller.get().name, message, total.index)
        except BatchRefused as exc:
            await self._abort_stream(context, total, getattr(grpc.StatusCode, exc.code), str(exc))
        total.add(batch, len(message.outcomes))

    async def _abort_stream(
        self, context, total: _StreamTotals, code: grpc.StatusCode, message: str
    ) -> None:
        """Abort, telling the sender which of its batches were applied before the failure."""
        applied = ",".join(str(s) for s in total.applied_sequences)
        context.set_trailing_metadata((("router-applied-sequences", applied),))
        if total.batches:
            message += (
                f" (after {total.batches} batch(es) of this call were applied:"
                f" {total.accepted} accepted, {total.rejected} rejected;"
                f" sequences [{applied}])"
            )
        await context.abort(code, message)

    async def _check_size(
        self, message, unit: str, context: grpc.aio.ServicerContext, total=None
    ) -> None:
        """INVALID_ARGUMENT (aborting the RPC) for a batch over the proto's limit."""
        if len(message.outcomes) > MAX_OUTCOMES_PER_BATCH:
            await self._abort_stream(
                context,
                total or _StreamTotals(),
                grpc.StatusCode.INVALID_ARGUMENT,
                f"outcomes: at most {MAX_OUTCOMES_PER_BATCH} per {unit}, "
                f"got {len(message.outcomes)}",
            )

    @_counted
    async def ListModels(self, request, context):
        response = router_pb2.ListModelsResponse()
        for model in self.core.catalog.models.values():
            summary = response.models.add(
                id=model.id,
                endpoint_count=len(model.endpoints),
                providers=[e.provider.name for e in model.endpoints],
            )
            best = best_p50s(model, self.core.endpoint_stats)
            if best.ttft_ms is not None:
                summary.best_p50_ttft_ms = best.ttft_ms.value
            if best.tokens_per_second is not None:
                summary.best_p50_tokens_per_second = best.tokens_per_second.value
        return response

    @_counted
    async def GetModelEndpoints(self, request, context):
        try:
            model = self.core.model(request.model)
        except UnknownModelError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        response = router_pb2.GetModelEndpointsResponse(model=model.id)
        for endpoint in model.endpoints:
            response.endpoints.append(
                endpoint_metrics(
                    endpoint,
                    self.core.endpoint_stats(endpoint.key),
                    self.core.health_view(endpoint.key),
                )
            )
        return response

    @_counted
    async def GetHealth(self, request, context):
        if request.model:
            try:
                models = [self.core.model(request.model)]
            except UnknownModelError as exc:
                await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        else:
            models = list(self.core.catalog.models.values())
        response = router_pb2.GetHealthResponse()
        for model in models:
            for endpoint in model.endpoints:
                response.endpoints.append(
                    endpoint_health(endpoint, self.core.health_view(endpoint.key))
                )
        return response
