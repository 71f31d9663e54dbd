"""What every Router RPC passes before its handler runs: a parseable request and a caller.

grpcio turns a request that fails to parse (bad UTF-8 in a string field,
corrupt wire format) into UNKNOWN with an ERROR traceback per call, before any
handler sees it, so a flood of junk became megabytes of log. Here the
deserializer never raises: it hands the handler a :class:`Malformed` marker,
and the handler answers INVALID_ARGUMENT, counted like every other status and
logged at most once per interval per cause (:class:`LogLimiter`).

The caller is identified (:mod:`router_service.auth`) and its scope checked
before the handler runs; the handler reads it from :data:`current_caller`.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import sys
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from router_common.log_limit import LogLimiter, MalformedHttpLogFilter
from router_common.pb import router_pb2
from router_service.auth import Caller

log = logging.getLogger(__name__)

SERVICE = router_pb2.DESCRIPTOR.services_by_name["Router"]

#: The caller of the RPC being handled (each RPC runs in its own task).
current_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("current_caller")


class Malformed:
    """Stands in for a request message that did not parse; ``cause`` is short and fixed."""

    __slots__ = ("cause",)

    def __init__(self, cause: str) -> None:
        self.cause = cause


def _cause(exc: Exception) -> str:
    text = str(exc)
    if "UTF-8" in text:
        return "a string field is not valid UTF-8"
    return "the message is not valid protobuf wire format"


def safe_deserializer(message_class: Any) -> Callable[[bytes], Any]:
    """``message_class.FromString`` that returns Malformed instead of raising."""
    parse = message_class.FromString

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, ValueError, RuntimeError) as exc:
            return Malformed(_cause(exc))

    return deserialize


def add_router_to_server(servicer: Any, server: grpc.aio.Server) -> None:
    """Register router.v1.Router like the generated helper, with safe deserializers."""
    handlers = {}
    for method in SERVICE.methods:
        request_class = getattr(router_pb2, method.input_type.name)
        response_class = getattr(router_pb2, method.output_type.name)
        factory = (
            grpc.stream_unary_rpc_method_handler
            if method.client_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = factory(
            getattr(servicer, method.name),
            request_deserializer=safe_deserializer(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )


def add_guarded_service(
    server: grpc.aio.Server,
    service: Any,
    servicer: Any,
    messages: Any,
    limiter: LogLimiter,
    name: str | None = None,
) -> None:
    """Register a library servicer (health, reflection) with safe deserializers.

    Why: these services are open to every caller, and grpcio answered a corrupt
    request with UNKNOWN (``Unexpected <class '...DecodeError'>``) and an ERROR
    traceback per call. Here, as for router.v1.Router, it is INVALID_ARGUMENT
    with a short fixed message, logged at most once per interval per cause.
    ``messages`` is the module holding the request and response classes;
    ``name`` registers the service under another full name (reflection v1);
    ``service`` is the service's descriptor (``*_pb2.DESCRIPTOR.services_by_name``).
    """
    full_name = name or service.full_name
    handlers = {}
    for method in service.methods:
        request_class = getattr(messages, method.input_type.name)
        response_class = getattr(messages, method.output_type.name)
        where = f"{full_name}/{method.name}"
        behavior = _guarded(getattr(servicer, method.name), method.client_streaming, where, limiter)
        factory = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(
            behavior,
            request_deserializer=safe_deserializer(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(full_name, handlers),))


def _guarded(
    behavior: Callable[..., Any], client_streaming: bool, where: str, limiter: LogLimiter
) -> Callable[..., Any]:
    """``behavior`` that first refuses Malformed requests (INVALID_ARGUMENT)."""

    async def refuse(request: Malformed, context: grpc.aio.ServicerContext) -> None:
        limiter.warning(log, "malformed request", f"{where}:{request.cause}", method=where)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.cause)

    if client_streaming:

        async def checked(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            async for request in requests:
                if isinstance(request, Malformed):
                    await refuse(request, context)
                yield request

        if inspect.isasyncgenfunction(behavior):

            async def stream_in_stream_out(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                async for response in behavior(checked(requests, context), context):
                    yield response

            return stream_in_stream_out

        async def stream_in(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            return await behavior(checked(requests, context), context)

        return stream_in

    if inspect.isasyncgenfunction(behavior):

        async def unary_in_stream_out(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                await refuse(request, context)
            async for response in behavior(request, context):
                yield response

        return unary_in_stream_out

    async def unary_in(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            await refuse(request, context)
        return await behavior(request, context)

    return unary_in


def install_malformed_http_limit(limiter: LogLimiter) -> None:
    """Install MalformedHttpLogFilter on aiohttp's server logger (one filter per
    process; a router started again in the same process brings its own limiter)."""
    logger = logging.getLogger("aiohttp.server")
    for existing in logger.filters:
        if isinstance(existing, MalformedHttpLogFilter):
            existing.limiter = limiter
            return
    logger.addFilter(MalformedHttpLogFilter(limiter))


def install_unraisable_limit(limiter: LogLimiter) -> None:
    """Exceptions Python cannot raise (``sys.unraisablehook``) as rate-limited JSON lines.

    Why: the default hook prints a plain-text traceback to stderr per event, and a
    client can provoke one per connection: a TLS ClientHello whose server name is
    not ASCII fails in ssl's SNI callback (the HTTP side installs one to switch each
    handshake to the current certificates). Logged once per exception class per
    interval, like every other line a caller can provoke.
    """

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        cause = f"unraisable:{type(exc).__name__}"
        suppressed = limiter.allow(cause)
        if suppressed is None:
            return
        log.warning(
            "exception ignored (Python could not raise it)",
            exc_info=(unraisable.exc_type, exc, unraisable.exc_traceback) if exc else None,
            extra={"cause": cause, "suppressed": suppressed},
        )

    sys.unraisablehook = hook
