"""The router's HTTP side: metrics API, dashboard, Prometheus ``/metrics``, liveness.

Routes (documents are built in :mod:`router_service.metrics_json`):

=============================================  ============================================
``GET /healthz``                               liveness + catalog version
``GET /readyz``                                readiness: 503 until SERVING (catalog and,
                                               with --redis, the shared state loaded) and
                                               while draining (``reason`` says which);
                                               for HTTPS probes under TLS
``GET /v1/models``                             model list with best P50 TTFT/throughput
``GET /v1/models/{creator}/{name}/endpoints``  per-provider metrics, uptime, health
``GET /v1/models/{creator}/{name}/timeseries`` per provider: ``?range=5m|15m|1h`` once (10 s
                                               points; 1 min for 1h), default 15m
``GET /metrics``                               Prometheus (text or OpenMetrics, negotiated)
``GET /``                                      dashboard: model list
``GET /models/{creator}/{name}``               dashboard: one model's providers (404
                                               page with navigation if unknown)
``GET /static/...``                            dashboard assets (no CDN, works offline)
=============================================  ============================================

Handlers are thin: they look the model up in the catalog (unknown → 404 with
a JSON error body under ``/v1``) and serialise a pure function's result.
Model ids contain a slash, hence the two path segments.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from router_common.catalog_model import Model
from router_service.core import RouterCore, UnknownModelError
from router_service.dashboard_series import DEFAULT_RANGE, RANGES
from router_service.grpc_api import RpcCounter
from router_service.metrics_json import (
    endpoints_document,
    models_document_in_slices,
    not_found_document,
    timeseries_document,
)
from router_service.prometheus import EndpointExposition, build_registry

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: Dynamic documents must never be cached: the dashboard polls them.
NO_STORE = {"Cache-Control": "no-store"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The dashboard loads only its own scripts, styles and JSON (no inline script, no
#: CDN), so a policy allowing nothing else costs nothing and turns any future
#: injected markup into inert text. ``frame-ancestors`` (and X-Frame-Options for
#: older browsers) stops another site framing the dashboard under a user's
#: browser-remembered Basic credentials (clickjacking).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
#: Text types served without a charset (aiohttp's FileResponse names none): a
#: browser would otherwise guess the encoding of pages that echo a URL.
_TEXT_TYPES = frozenset({"text/html", "text/css", "application/javascript", "text/javascript"})


async def security_headers(_: web.Request, response: web.StreamResponse) -> None:
    """Every answer of the HTTP port (pages, JSON, /metrics, aiohttp's own 404 and 405,
    the auth middleware's 401/403) carries the security headers.

    Why a response-prepare hook and not a middleware: it also sees the responses that
    aiohttp builds from exceptions raised past every middleware.
    """
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.content_type in _TEXT_TYPES and response.charset is None:
        response.charset = "utf-8"


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Under /v1, answer unknown paths and methods in JSON like every other API error."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/v1/") or exc.status < 400:
            raise
        kind = "not_found" if exc.status == 404 else "invalid_request"
        body = {
            # The path as sent (percent-encoded): the decoded one may be a route that works.
            "error": {
                "message": f"{exc.reason}: {request.method} {request.rel_url.raw_path}",
                "type": kind,
            }
        }
        # Allow stays: a 405 must say which methods are (RFC 9110).
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return web.json_response(body, status=exc.status, headers={**NO_STORE, **allow})


#: The app's Prometheus registry, for optional collectors (replication) to join.
REGISTRY_KEY = web.AppKey("metrics_registry", CollectorRegistry)


def build_http_app(
    core: RouterCore,
    rpc_counter: RpcCounter,
    middlewares: Sequence[Middleware] = (),
    collectors: Sequence[Collector] = (),
    ready: Callable[[], bool] = lambda: True,
    not_ready_reason: Callable[[], str] = lambda: "starting",
) -> web.Application:
    """The aiohttp application mounted on the router's HTTP port.

    ``ready`` says whether the router is SERVING on grpc.health.v1: /readyz answers
    it on HTTP, because under TLS Kubernetes' native gRPC probes cannot be used and
    /healthz (liveness) is 200 before the shared state is loaded and while draining.
    """
    app = web.Application(middlewares=[*middlewares, json_errors])
    app.on_response_prepare.append(security_headers)
    registry = build_registry(core, rpc_counter)
    for collector in collectors:
        registry.register(collector)
    app[REGISTRY_KEY] = registry

    def lookup(request: web.Request) -> Model:
        model_id = f"{request.match_info['creator']}/{request.match_info['name']}"
        return core.model(model_id)

    def model_document(build: Callable[[RouterCore, Model], dict]) -> Handler:
        """A handler answering ``build(core, model)`` for the path's model, or a JSON 404."""

        async def handle(request: web.Request) -> web.Response:
            try:
                model = lookup(request)
            except UnknownModelError as exc:
                return web.json_response(not_found_document(str(exc)), status=404, headers=NO_STORE)
            return web.json_response(build(core, model), headers=NO_STORE)

        return handle

    async def timeseries(request: web.Request) -> web.Response:
        try:
            model = lookup(request)
        except UnknownModelError as exc:
            return web.json_response(not_found_document(str(exc)), status=404, headers=NO_STORE)
        given = request.query.getall("range", [DEFAULT_RANGE])
        range_name = given[0]
        message = None
        if len(given) > 1:
            # Two ranges are no range: answering the first would hide the caller's mistake.
            message = f"range: give it once, got {len(given)}: {json.dumps(given[:4])}"
        elif range_name not in RANGES:
            shown = json.dumps(range_name[:40])
            message = f"range: expected one of {', '.join(RANGES)}, got {shown}"
        if message is not None:
            body = {"error": {"message": message, "type": "invalid_request"}}
            return web.json_response(body, status=400, headers=NO_STORE)
        return web.json_response(
            await timeseries_document(core, model, range_name), headers=NO_STORE
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "catalog_version": core.catalog_version})

    async def readyz(_: web.Request) -> web.Response:
        if ready():
            return web.json_response({"status": "ready"}, headers=NO_STORE)
        body = {"status": "not_ready", "reason": not_ready_reason()}
        return web.json_response(body, status=503, headers=NO_STORE)

    async def list_models(_: web.Request) -> web.Response:
        document = await models_document_in_slices(core)
        # orjson: the list of a 10,000-endpoint catalog is ~1 MB, which ``json`` encodes
        # in ~13 ms of the router's loop, the longest stretch left after the slices.
        return web.Response(
            body=orjson.dumps(document),
            content_type="application/json",
            charset="utf-8",
            headers=NO_STORE,
        )

    endpoint_series = EndpointExposition(core)

    async def metrics(request: web.Request) -> web.StreamResponse:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        # The per-endpoint families first (rendered in slices, see EndpointExposition),
        # then the registry's, whose OpenMetrics rendering ends with the "# EOF" line.
        # Everything is rendered before the head is sent, so a failure is still a 500.
        chunks = [*await endpoint_series.render(), encoder(registry)]
        response = web.StreamResponse(headers={"Content-Type": content_type, **NO_STORE})
        response.content_length = sum(len(chunk) for chunk in chunks)
        await response.prepare(request)
        if request.method != "HEAD":  # a streamed answer's body is the handler's to omit
            for chunk in chunks:
                await response.write(chunk)  # waits for the socket when its buffer is full
        await response.write_eof()
        return response

    async def dashboard_index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers=NO_STORE)

    async def dashboard_model(request: web.Request) -> web.StreamResponse:
        try:
            lookup(request)
        except UnknownModelError:
            # A page, not a bare text line: it says what was asked for and links back
            # to the model list (and to the closest ids), so nobody is stranded.
            return web.FileResponse(STATIC_DIR / "unknown.html", status=404, headers=NO_STORE)
        return web.FileResponse(STATIC_DIR / "model.html", headers=NO_STORE)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{creator}/{name}/endpoints", model_document(endpoints_document))
    app.router.add_get("/v1/models/{creator}/{name}/timeseries", timeseries)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", dashboard_index)
    app.router.add_get("/models/{creator}/{name}", dashboard_model)
    app.router.add_static("/static", STATIC_DIR)
    return app
