"""The router.v1.Router gRPC servicer: thin translation onto RouterCore.

Every handler maps domain errors to precise status codes (NOT_FOUND naming the
model, INVALID_ARGUMENT naming the field) and counts itself by method and
status for Prometheus. StreamOutcomes ingests message by message so a sidecar's
long-lived stream never buffers more than one batch here.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from router_common.domain import EndpointKey
from router_common.limits import MAX_OUTCOMES_PER_BATCH, MAX_REJECTIONS_REPORTED
from router_common.pb import router_pb2, router_pb2_grpc
from router_service.core import (
    IngestResult,
    RouterCore,
    UnknownModelError,
)
from router_service.figures import best_p50s
from router_service.ranking import RankingInputError
from router_service.wire import (
    endpoint_health,
    endpoint_metrics,
    endpoint_template,
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
    """Record each call's final status code; context.abort raises, so catch and re-raise."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: RouterServicer, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            response = await method(self, request, context)
        except grpc.aio.AbortError:
            self.rpc_counter.observe(name, context.code() or grpc.StatusCode.UNKNOWN)
            raise
        except Exception:
            self.rpc_counter.observe(name, grpc.StatusCode.INTERNAL)
            log.exception("rpc failed", extra={"method": name})
            raise
        self.rpc_counter.observe(name, grpc.StatusCode.OK)
        return response

    return wrapper


class RouterServicer(router_pb2_grpc.RouterServicer):
    """Implements router.v1.Router over a RouterCore."""

    def __init__(self, core: RouterCore, on_ingested: Callable[[], None]) -> None:
        self.core = core
        self.rpc_counter = RpcCounter()
        #: Called after each accepted batch; the app coalesces quantile refreshes.
        self._on_ingested = on_ingested
        self._template_version: str | None = None
        self._template_cache: dict[EndpointKey, router_pb2.RankedEndpoint] = {}

    @_counted
    async def RankProviders(self, request, context):
        try:
            routing = routing_request(request)
            result = self.core.rank(routing)
        except UnknownModelError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except RankingInputError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not result.ranked:
            reasons = "; ".join(
                f"{e.endpoint.provider.name}: {e.reason.code}" for e in result.excluded
            )
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"no endpoint of {request.model!r} satisfies the preferences ({reasons})",
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

    @_counted
    async def RecordOutcome(self, request, context):
        await self._check_size(request, "call", context)
        return self._ack(self._ingest(request.outcomes, 0))

    @_counted
    async def StreamOutcomes(self, request_iterator: AsyncIterator, context):
        total = IngestResult()
        async for message in request_iterator:
            await self._check_size(message, "message", context)
            index = total.accepted + total.rejected
            batch = self._ingest(message.outcomes, index)
            total.accepted += batch.accepted
            total.rejected += batch.rejected
            room = MAX_REJECTIONS_REPORTED - len(total.rejections)
            total.rejections.extend(batch.rejections[:room])
        return self._ack(total)

    @staticmethod
    async def _check_size(message, unit: str, context: grpc.aio.ServicerContext) -> None:
        """INVALID_ARGUMENT (aborting the RPC) for a batch over the proto's limit."""
        if len(message.outcomes) > MAX_OUTCOMES_PER_BATCH:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"outcomes: at most {MAX_OUTCOMES_PER_BATCH} per {unit}, "
                f"got {len(message.outcomes)}",
            )

    def _ingest(self, outcomes, first_index: int) -> IngestResult:
        result = self.core.record(outcomes, first_index)
        if result.accepted:
            self._on_ingested()
        return result

    @staticmethod
    def _ack(result: IngestResult) -> router_pb2.OutcomeAck:
        ack = router_pb2.OutcomeAck(accepted=result.accepted, rejected=result.rejected)
        for index, rejection in result.rejections or ():
            ack.rejections.add(index=index, reason=str(rejection))
        return ack

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
