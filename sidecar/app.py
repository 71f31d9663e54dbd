"""The sidecar process: aiohttp routes, error shaping, and the wiring of its parts.

Every error the app can see is OpenAI-shaped JSON with a 4xx/5xx status; a
bug becomes a 500 with a generic message (the traceback goes to the log, not
to the caller). Nothing here logs request or response content.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import grpc
import orjson
from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestPayloadError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router_common.catalog_model import Catalog, unknown_model_message
from router_common.json_text import as_json
from router_common.log_limit import MalformedHttpLogFilter
from router_common.logs import DirectJsonLog
from router_common.pb import router_pb2, router_pb2_grpc
from router_common.shutdown import bounded
from sidecar.config import SidecarSettings
from sidecar.keys import EnvThenFiles, ProviderKeys
from sidecar.lean_server import LeanFront, LeanRequest
from sidecar.metrics import CONTENT_TYPE, SidecarMetrics
from sidecar.outcomes import OutcomeReporter
from sidecar.preferences import RequestError, parse_request
from sidecar.proxy import (
    CLIENT_GONE,
    SERVED_BY,
    SHUTDOWN_MESSAGE,
    STREAM_ERROR,
    Proxy,
    error_body,
)
from sidecar.ranking_client import RankingClient
from sidecar.redaction import KeyRedactor, RedactingLogFilter
from sidecar.request_id import HEADER, REQUEST_ID, request_id
from sidecar.router_channel import open_router_channel
from sidecar.router_clock import RouterClock
from sidecar.transport import UpstreamTransport, make_transport

log = logging.getLogger("sidecar")

#: After the shutdown grace, how long cancelled requests get to send their error.
_CUT_WAIT_S = 2.0

#: Keepalive pings to each router replica: how often, and how long an answer may take
#: before the connection is given up as hung (see GRPC_CHANNEL_OPTIONS).
ROUTER_KEEPALIVE_TIME_MS = 15_000
ROUTER_KEEPALIVE_TIMEOUT_MS = 5_000

#: Reconnect quickly after a router restart (gRPC's default backoff grows to 120 s).
GRPC_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
    # Spread calls over every address the target resolves to (a headless
    # Service's router replicas via dns:///), and skip a replica that is down.
    ("grpc.service_config", '{"loadBalancingConfig": [{"round_robin": {}}]}'),
    # A replica that hangs (a stopped process, a frozen node, a path that drops
    # packets) keeps its TCP connection "up", so round_robin kept sending it every
    # other call, each failing at its deadline, for as long as it hung. A ping
    # unanswered within the timeout closes that connection and round_robin skips
    # the replica until it answers again. 15 s stays above the router's
    # 10 s minimum between a client's pings (router_service/listen.py).
    ("grpc.keepalive_time_ms", ROUTER_KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", ROUTER_KEEPALIVE_TIMEOUT_MS),
    # grpcio 1.85 times a ping by this one (default 60 s), not keepalive_timeout_ms alone.
    ("grpc.http2.ping_timeout_ms", ROUTER_KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)

_STATUS_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


#: What the sidecar answers, named in its 404 and 405 (OpenAI's other APIs are not proxied).
_SERVED_ROUTES = (
    "this sidecar serves POST /v1/chat/completions, GET /v1/models and GET /v1/models/{model} "
    "(no embeddings, completions, responses or other OpenAI APIs)"
)


def _unreadable_body(request: web.Request) -> str:
    """What a body aiohttp could not read is, naming only an encoding it knows."""
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    if encoding in ("gzip", "deflate"):
        return f"request body is not valid {encoding} data"
    return "request body could not be read"


def _no_model_list() -> web.Response:
    """The 503 of ``/v1/models`` (and one model) when neither the router nor a fallback
    catalog can say which models exist."""
    return _error_response(
        503,
        "the router is unreachable and no fallback catalog is configured",
        None,
        "router_unavailable",
    )


def _error_response(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> web.Response:
    type_ = _STATUS_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return web.json_response(error_body(message, type_, param, code), status=status)


class SidecarApp:
    """One sidecar: ``await start()``, then ``base_url``/``port``; ``await stop()``."""

    def __init__(
        self,
        settings: SidecarSettings,
        catalog: Catalog | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = SidecarMetrics()
        #: This node's wall clock (a test injects a skewed one), read through the
        #: offset to the router's (sidecar/router_clock.py) for outcome start times.
        self.router_clock = RouterClock(wall_clock, self.metrics.router_clock_offset.set)
        self.catalog = catalog
        self.port = 0
        self._channel: grpc.aio.Channel | None = None
        self._runner: web.AppRunner | None = None
        #: ``--http-server lean``: the listener parsing chat POSTs itself (lean_server.py).
        self._front: LeanFront | None = None
        self._transport: UpstreamTransport | None = None
        self.ranking: RankingClient | None = None
        self.reporter: OutcomeReporter | None = None
        self.proxy: Proxy | None = None
        self._models_cache: dict[str, Any] | None = None
        #: Chat requests being answered (their handler tasks) and an event set while
        #: there are none: what a shutdown waits for, and cancels when its grace is over.
        self._inflight: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        #: Every configured provider key, and the one function that removes them
        #: from whatever leaves this process (responses, streams, logs).
        self.redactor = KeyRedactor()
        self._log_filter = RedactingLogFilter(self.redactor)
        #: aiohttp's per-request parser tracebacks, made rate-limited one-line warnings.
        self._malformed_filter = MalformedHttpLogFilter()
        #: The per-request access line: same JSON fields as every other log line,
        #: written without the logging machinery (see DirectJsonLog), key-scrubbed.
        self._access_log = DirectJsonLog("sidecar", self.redactor.scrub)
        environ = settings.env()
        if settings.provider_keys_dir is not None:
            environ = EnvThenFiles(environ, settings.provider_keys_dir)
        self.keys = ProviderKeys(environ, self.redactor, self.metrics.providers_without_key.set)

    @property
    def base_url(self) -> str:
        """OpenAI base URL of this sidecar, e.g. ``http://127.0.0.1:8080/v1``."""
        host = self.settings.listen_host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/v1"

    async def __aenter__(self) -> SidecarApp:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Load the fallback catalog (CatalogError if bad), connect, and listen."""
        s = self.settings
        if self.catalog is None and s.fallback_catalog:
            from router_common.catalog import load_catalog

            self.catalog = load_catalog(s.fallback_catalog)
        for handler in logging.getLogger().handlers:
            handler.addFilter(self._log_filter)
        logging.getLogger("aiohttp.server").addFilter(self._malformed_filter)
        if self.catalog is not None:
            self.keys.note_catalog(self.catalog)
        stub = None
        if s.router:
            self._channel = open_router_channel(
                s.router,
                GRPC_CHANNEL_OPTIONS,
                token_file=s.router_token_file,
                ca=s.router_ca,
                cert=s.router_tls_cert,
                key=s.router_tls_key,
            )
            stub = router_pb2_grpc.RouterStub(self._channel)
        self._stub = stub
        self.ranking = RankingClient(s, stub, self.catalog, router_clock=self.router_clock)
        self.ranking.on_source = self.metrics.count_ranking_source
        self.reporter = OutcomeReporter(
            stub,
            self.metrics,
            max_queue=s.outcome_queue_size,
            batch_size=s.outcome_batch_size,
            flush_interval_s=s.outcome_flush_interval_s,
            send_timeout_s=s.outcome_send_timeout_s,
            max_backoff_s=s.outcome_max_backoff_s,
            on_router_ok=self._router_ok,
            on_router_down=lambda: self.metrics.router_up.set(0),
            urgent_min_gap_s=s.outcome_urgent_min_gap_s,
            on_delivered=self.ranking.on_delivered,
            router_clock=self.router_clock,
        )
        self._transport = make_transport(s.upstream_client)
        self.proxy = Proxy(
            s,
            self._transport,
            self.ranking,
            self.metrics,
            self.reporter.submit,
            self.keys,
            self.redactor,
            report_urgently=partial(self.reporter.submit, urgent=True),
        )
        app = web.Application(client_max_size=s.max_body_bytes, middlewares=[self._errors])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model:.+}", self._model)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        # aiohttp's own cut (cancel, then close the socket at once: the app gets a
        # body without its end) must never come before ours (_drain_requests).
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=s.shutdown_grace_s + _CUT_WAIT_S,
            # aiohttp's own default is 3630 s: an idle keep-alive, or a client sending its
            # headers a byte at a time, held a descriptor for an hour.
            keepalive_timeout=s.client_idle_timeout_s,
        )
        await self._runner.setup()
        if s.http_server == "lean":
            # The app's own middleware and handler, without aiohttp's request machinery;
            # every other request is aiohttp's, on the same connection (lean_server.py).
            assert self._runner.server is not None
            self._front = LeanFront(
                partial(self._errors, handler=self._chat),
                self._runner.server,
                s.client_idle_timeout_s,
                s.max_body_bytes,
            )
            self.port = await self._front.listen(s.listen_host, s.listen_port)
        else:
            site = web.TCPSite(self._runner, s.listen_host, s.listen_port)
            await site.start()
            self.port = int(self._runner.addresses[0][1])
        self.reporter.start()
        log.info(
            "sidecar started",
            extra={
                "listen": self.base_url,
                "router": s.router,
                "fallback_catalog": bool(self.catalog),
            },
        )

    async def stop(self) -> None:
        """Stop listening, drain in-flight requests, flush outcomes briefly, close connections."""
        if self._runner is not None:
            front = self._front
            if front is not None:
                front.stop_listening()
                front.close_idle()
            # cleanup() closes the listening socket first, then waits for handlers.
            cleanup = asyncio.ensure_future(self._runner.cleanup())
            await self._drain_requests()
            if front is not None:
                await bounded(
                    front.wait_closed(_CUT_WAIT_S), 5.0 + _CUT_WAIT_S, "close connections"
                )
                self._front = None
            await bounded(cleanup, 5.0 + _CUT_WAIT_S, "close HTTP listener")
            self._runner = None
        if self.proxy is not None:
            await bounded(self.proxy.hedger.close(), 2.0, "stop measuring race losers")
        if self.reporter is not None:
            await bounded(self.reporter.stop(), 5.0, "flush outcomes")
        if self._transport is not None:
            await bounded(self._transport.close(), 5.0, "close upstream connections")
            self._transport = None
        if self.ranking is not None:
            await bounded(self.ranking.close(), 2.0, "cancel ranking refreshes")
        if self._channel is not None:
            await bounded(self._channel.close(), 5.0, "close router channel")
            self._channel = None
        self._access_log.flush()
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self._log_filter)
        logging.getLogger("aiohttp.server").removeFilter(self._malformed_filter)

    async def _drain_requests(self) -> None:
        """Let in-flight chat requests finish within the grace, then end the rest readably.

        Until this existed a SIGTERM gave requests aiohttp's 2 s and then cut
        their connections: a streaming app got a body without its end, and the
        access log called it 499, the app's doing.
        """
        await asyncio.sleep(0)  # let cleanup() close the listener first
        if self._idle.is_set():
            return
        grace = self.settings.shutdown_grace_s
        log.info(
            "draining in-flight requests", extra={"requests": len(self._inflight), "grace_s": grace}
        )
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
            return
        except TimeoutError:
            pass
        pending = list(self._inflight)
        log.warning(
            "shutdown grace over, ending in-flight requests with an error",
            extra={"requests": len(pending)},
        )
        if self.proxy is not None:
            self.proxy.shutting_down = True
        for task in pending:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), _CUT_WAIT_S)

    def _router_ok(self) -> None:
        self.metrics.router_up.set(1)
        if self.ranking is not None:
            self.ranking.note_router_ok()

    # -- middleware --------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Every answer carries the request's id (``sidecar.request_id``); the stream's
        is set by the proxy, whose headers leave before this returns."""
        if isinstance(request, LeanRequest):  # its header fields are built only if read
            given = request.header(b"x-request-id")
        else:
            given = request.headers.get(HEADER)
        rid = request[REQUEST_ID] = request_id(given)
        response = await self._answer(request, handler)
        if not response.prepared:
            response.headers[HEADER] = rid
        return response

    async def _answer(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Every failure becomes OpenAI-shaped JSON; no traceback ever reaches the caller."""
        try:
            return await handler(request)
        except RequestError as exc:
            response = _error_response(exc.status, exc.message, exc.param, exc.code)
            if not request.content.is_eof():
                # Refused before its body was all here (408 body_timeout, a 413 by
                # Content-Length): the connection cannot carry another request. Without
                # ``Connection: close`` a keep-alive client (an SDK retrying the 408)
                # sent its next request on it, whose bytes were read as the rest of
                # this body, and got a plain-text 400 "Invalid method encountered".
                response.force_close()
            return response
        except web.HTTPRequestEntityTooLarge:
            return _error_response(413, "request body too large", None, "body_too_large")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = exc.reason or "error"
            if exc.status in (404, 405):
                # A bare "Not Found" left an app calling embeddings, the Responses API or
                # legacy completions through an OpenAI SDK guessing what was wrong.
                message = f"{message}: {request.method} {as_json(request.path)}; {_SERVED_ROUTES}"
            response = _error_response(exc.status, message, None, None)
            if "Allow" in exc.headers:  # a 405 must say which methods are (RFC 9110)
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("unhandled error", extra={"path": request.path})
            return _error_response(500, "internal sidecar error", None, "internal_error")

    # -- routes -----------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        t_start = time.perf_counter()
        status = 500
        provider = None
        model = None
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
            self._idle.clear()
        try:
            length = request.content_length
            if length is not None and length > self.settings.max_body_bytes:
                raise RequestError("request body too large", None, 413, "body_too_large")
            try:
                if request.content.is_eof():  # the whole body is here (most requests): no timer
                    raw = await request.read()
                else:
                    # Bounded: aiohttp sets no limit on reading a body, so an app (or anyone
                    # reaching the port) trickling one byte a second held a handler for days.
                    async with asyncio.timeout(self.settings.client_idle_timeout_s):
                        raw = await request.read()
            except TimeoutError:
                raise RequestError(
                    f"request body not received within {self.settings.client_idle_timeout_s} s",
                    None,
                    408,
                    "body_timeout",
                ) from None
            except web.HTTPRequestEntityTooLarge:
                raise RequestError("request body too large", None, 413, "body_too_large") from None
            except RequestPayloadError:
                # The app's mistake (a corrupt gzip/deflate body, broken chunked
                # framing), not the sidecar's: a 400, not a 500 and a traceback.
                raise RequestError(_unreadable_body(request), None, 400, "invalid_json") from None
            try:
                body = orjson.loads(raw)
            except ValueError:
                raise RequestError(
                    "request body is not valid JSON", None, 400, "invalid_json"
                ) from None
            req = parse_request(body, self.settings.default_sort, self.settings.default_zdr)
            model = req.model
            assert self.proxy is not None
            resp = await self.proxy.handle(request, req, t_start)
            status = 499 if request.get(CLIENT_GONE) else resp.status
            provider = resp.headers.get("x-router-provider")
            model = resp.headers.get("x-router-model", model)  # a fallback model may serve
            return resp
        except RequestError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            if self.proxy is None or not self.proxy.shutting_down or SERVED_BY in request:
                status = 499  # the app closed its connection: nginx's "client closed request"
                provider, model = request.get(SERVED_BY, (provider, model))
                raise
            # The shutdown grace ended this request before anything was sent (reading
            # its body, waiting for a ranking): a 503 the app can read and retry.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            status = 503
            return _error_response(503, SHUTDOWN_MESSAGE, None, "sidecar_shutting_down")
        except ConnectionError:
            status = 499  # the app closed its connection: nginx's "client closed request"
            provider, model = request.get(SERVED_BY, (provider, model))  # left mid-stream
            raise
        finally:
            if task is not None:
                self._inflight.discard(task)
                if not self._inflight:
                    self._idle.set()
            self.metrics.count_request(status)
            line = {
                "model": model,
                "status": status,
                "provider": provider,
                "duration_ms": round((time.perf_counter() - t_start) * 1000, 3),
                "request_id": request.get(REQUEST_ID),
            }
            broke = request.get(STREAM_ERROR)
            if broke is not None:  # a 200 whose stream ended in an error event
                line["stream_error"] = broke
            self._access_log.info("request", line)

    async def _models(self, request: web.Request) -> web.Response:
        """The router's model list (or the fallback catalog's), in OpenAI's shape.

        Figures carry the names the router's HTTP API uses (``best_p50_ttft_ms``,
        ``best_p50_throughput``), so one figure has one name across APIs.
        """
        body = await self._model_list()
        if body is None:
            return _no_model_list()
        return web.json_response(body)

    async def _model(self, request: web.Request) -> web.Response:
        """One entry of the list: OpenAI's "retrieve model" (``client.models.retrieve``).

        Ids hold a slash (``creator/name``), so the rest of the path is the id.
        """
        model = request.match_info["model"]
        body = await self._model_list()
        if body is None:
            return _no_model_list()
        for entry in body["data"]:
            if entry["id"] == model:
                return web.json_response(entry)
        return _error_response(404, unknown_model_message(model), "model", "model_not_found")

    async def _model_list(self) -> dict[str, Any] | None:
        """``{"object": "list", "data": [...]}`` from the router, else the last answer,
        else the fallback catalog; None when there is none of them."""
        data: list[dict[str, Any]] | None = None
        # Not while the router is being skipped after a failed call (as rankings do):
        # a hung router made every model list wait ``rank_timeout_s`` for nothing.
        ranking = self.ranking
        assert ranking is not None  # started
        usable = self._models_cache is not None or self.catalog is not None
        if self._stub is not None and not (usable and ranking.router_skipped):
            try:
                resp = await self._stub.ListModels(
                    router_pb2.ListModelsRequest(), timeout=self.settings.rank_timeout_s
                )
                data = [_model_entry(m.id, {"router": _summary(m)}) for m in resp.models]
            except grpc.aio.AioRpcError as exc:
                ranking.note_router_down(exc)
                data = None
        if data is None and self._models_cache is not None:
            return self._models_cache
        if data is None and self.catalog is not None:
            # The router's entry shape, so an app reads one shape whichever answered;
            # the catalog has no measurements, so the figures are null (as a fresh
            # router's are).
            data = [
                _model_entry(
                    mid,
                    {
                        "router": {
                            "endpoint_count": len(m.endpoints),
                            "best_p50_ttft_ms": None,
                            "best_p50_throughput": None,
                            "providers": [e.provider.name for e in m.endpoints],
                        }
                    },
                )
                for mid, m in self.catalog.models.items()
            ]
        if data is None:
            return None
        body = {"object": "list", "data": data}
        self._models_cache = body
        return body

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        """Ready when a ranking source is usable: router reachable or fallback catalog loaded."""
        router = await self._router_reachable()
        keyless_models = self.keys.models_without_key()
        ready = (router or self.catalog is not None) and not keyless_models
        body: dict[str, Any] = {
            "ready": ready,
            "router_reachable": router,
            "fallback_catalog": self.catalog is not None,
            "providers_without_key": [
                {"provider": name, "api_key_env": env}
                for name, env in sorted(self.keys.missing.items())
            ],
            "models_without_key": keyless_models,
        }
        return web.json_response(body, status=200 if ready else 503)

    async def _router_reachable(self) -> bool:
        """The router answers its gRPC health check within 0.5 s.

        A connected channel alone is not enough: a hung router (stopped,
        overloaded) keeps its TCP connection open while every ranking call times
        out. Any answer counts, NOT_SERVING included: behind a round-robin
        target one replica draining for a restart says so while the others
        serve, and readiness must not flap with it. The health service needs
        no token (see Security), so this works in protected mode too.
        """
        if self._channel is None:
            return False
        with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
            async with asyncio.timeout(0.5):
                await self._channel.channel_ready()
                health: Any = health_pb2_grpc.HealthStub(self._channel)  # stubs lack Check
                await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                return True
        return False

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.reporter is not None:
            self.metrics.outcome_queue_depth.set(self.reporter.backlog)
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def _summary(m: router_pb2.ModelSummary) -> dict[str, Any]:
    """A router ModelSummary under the router HTTP API's names."""
    return {
        "endpoint_count": m.endpoint_count,
        "best_p50_ttft_ms": m.best_p50_ttft_ms if m.HasField("best_p50_ttft_ms") else None,
        "best_p50_throughput": (
            m.best_p50_tokens_per_second if m.HasField("best_p50_tokens_per_second") else None
        ),
        "providers": list(m.providers),
    }


def _model_entry(model_id: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": 0,
        "owned_by": model_id.split("/", 1)[0],
        **extra,
    }
