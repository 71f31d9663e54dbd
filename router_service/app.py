"""Wires the router's pieces into one running process (the I/O edge).

Owns the gRPC server (Router + grpc.health.v1 + reflection), the HTTP server
(metrics API, dashboard, /metrics), the coalescing quantile refresher and the
catalog watcher. Start/stop are explicit so tests and the demo run it
in-process on port 0, and the CLI adds only signals and logging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2

from router_common.catalog import (
    CatalogError,
    parse_catalog_bytes,
    read_catalog,
    read_catalog_bytes,
    version_of_bytes,
)
from router_common.domain import Clock
from router_common.pb import router_pb2
from router_common.shutdown import bounded
from router_service import defaults
from router_service.catalog_watch import watch_catalog
from router_service.core import RouterCore
from router_service.grpc_api import RouterServicer
from router_service.health import HealthConfig
from router_service.http_api import build_http_app
from router_service.ingest import IngestCollector, IngestPacing
from router_service.listen import HttpSite, bind_error, check_port_free
from router_service.ranking import RankingConfig
from router_service.reflection_v1 import enable_reflection
from router_service.replication.config import ReplicationConfig
from router_service.replication.replicator import RedisReplicator, fleet_health_rng
from router_service.replication.wiring import start_replication
from router_service.rpc_guard import (
    LogLimiter,
    add_guarded_service,
    add_router_to_server,
    install_malformed_http_limit,
)
from router_service.security import RouterSecurity, SecuritySettings
from router_service.sketch_worker.proxy import SketchWorker, SketchWorkerCollector

log = logging.getLogger(__name__)

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name

#: Wildcard binds, and the loopback address a local client reaches them on.
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def host_port(host: str, port: int) -> str:
    """``host:port`` as gRPC targets and URLs write it: an IPv6 literal in brackets.

    Why: gRPC parses ``::1:50051`` as a host without a port (then binds port
    443 of a mangled address), so ``--host ::1`` or ``--host ::`` failed.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Process settings; the CLI fills them from flags and environment."""

    config_path: str
    grpc_host: str = "0.0.0.0"
    grpc_port: int = defaults.GRPC_PORT
    http_host: str = "0.0.0.0"
    http_port: int = defaults.HTTP_PORT
    #: Seconds in-flight RPCs get to finish on shutdown (SIGTERM).
    drain_seconds: float = 10.0
    #: Quantile refresh: at most this often after new data, and at least this often
    #: anyway: 0.5 s, the stats store's ``short_refresh_s``, so an endpoint whose
    #: 5-minute window waited for that cadence is merged without waiting for more
    #: data (an idle pass costs ~10 µs).
    refresh_min_interval_s: float = 0.1
    refresh_max_interval_s: float = 0.5
    #: Watch the catalog file and reload on change (SIGHUP always reloads).
    watch_catalog: bool = True
    #: Also re-hash the catalog this often, for filesystems without inotify
    #: (NFS, some overlay setups) and changes made before the watch began.
    catalog_poll_s: float = 5.0
    health: HealthConfig = field(default_factory=HealthConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    seed: int | None = None
    #: How outcome ingestion shares the event loop with ranking (router_service.ingest).
    ingest_pacing: IngestPacing = field(default_factory=IngestPacing)
    #: Authentication, TLS, protected mode, per-caller limits, connection bounds.
    security: SecuritySettings = field(default_factory=SecuritySettings)
    #: Share outcomes, sketches and health with peer replicas through Redis
    #: (router_service.replication); None: single process, in memory.
    replication: ReplicationConfig | None = None
    #: Keep the latency sketches and the dashboard history in a worker process
    #: (router_service.sketch_worker), off the loop that serves RankProviders.
    #: The CLI turns it on (``--sketch-worker``); off here, so an app built in a
    #: test with an injected clock keeps one clock.
    sketch_worker: bool = False


class RouterApp:
    """One router process: call start(), then stop() (or use ``async with``)."""

    def __init__(self, settings: Settings, clock: Clock = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.core: RouterCore | None = None
        self.grpc_port = 0
        self.http_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._http: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self._data_arrived = asyncio.Event()
        self.servicer: RouterServicer | None = None
        self.grpc_host = settings.grpc_host
        self.http_host = settings.http_host
        #: What the last refused reload refused (the file's version, or the error
        #: when it could not be read), so a file that stays bad is logged once,
        #: not at every poll.
        self._refused: str | None = None
        self.http_app: web.Application | None = None
        self.replicator: RedisReplicator | None = None
        #: The sketch worker, when it runs (``Settings.sketch_worker``).
        self.sketch_worker: SketchWorker | None = None
        #: SERVING on grpc.health.v1; /readyz answers the same on HTTP.
        self.serving = False
        #: Why not, for /readyz's body: a pod stuck NotReady says what it waits for.
        self.not_ready_reason = "starting"

    @property
    def grpc_address(self) -> str:
        return host_port(_WILDCARDS.get(self.grpc_host, self.grpc_host), self.grpc_port)

    @property
    def http_url(self) -> str:
        host = _WILDCARDS.get(self.http_host, self.http_host)
        scheme = "https" if self.settings.security.tls_cert else "http"
        return f"{scheme}://{host_port(host, self.http_port)}"

    async def __aenter__(self) -> RouterApp:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Load the catalog (CatalogError if bad), then serve gRPC and HTTP."""
        await self._set_serving(False)
        path = self.settings.config_path
        catalog, version = read_catalog(path)
        rng = random.Random(self.settings.seed)
        worker = await self._start_sketch_worker()
        self.core = RouterCore(
            catalog,
            version,
            self.clock,
            rng,
            health_config=self.settings.health,
            ranking_config=self.settings.ranking,
            health_rng=fleet_health_rng(self.settings.replication),
            store=worker.store if worker is not None else None,
            series=worker.series if worker is not None else None,
        )
        self.security = RouterSecurity(self.settings.security, self.clock)
        # Bare addresses from here on (``--host [::1]`` is ``::1``); host_port brackets them.
        grpc_host, http_host = (
            self.settings.grpc_host.strip("[]"),
            self.settings.http_host.strip("[]"),
        )
        self.grpc_host = self.security.bind_host(grpc_host)
        # One protected-mode warning when both ports were asked on one host.
        self.http_host = (
            self.grpc_host if http_host == grpc_host else self.security.bind_host(http_host)
        )
        self.servicer = RouterServicer(
            self.core,
            self._data_arrived.set,
            self.security.authenticator,
            self.security.ledger(self.clock),
            self.settings.ingest_pacing,
        )
        self.servicer.idle_stream_timeout_s = (
            self.settings.security.connections.idle_stream_timeout_s
        )
        await self._start_grpc()
        await self._start_http()
        self._tasks.append(asyncio.create_task(self.security.reload_loop(), name="auth-reload"))
        self._tasks.append(asyncio.create_task(self._refresh_loop(), name="refresh"))
        if self.settings.watch_catalog:
            self._tasks.append(asyncio.create_task(self._watch_catalog(), name="watch-catalog"))
        if self.settings.replication is not None:
            self.not_ready_reason = (
                "loading the shared state from redis (waits up to "
                f"{self.settings.replication.startup_timeout_s:g} s for it)"
            )
        await self._start_replication()
        await self._set_serving(True)
        log.info(
            "router started",
            extra={"grpc": self.grpc_address, "http": self.http_url, "config": path},
        )

    async def _start_sketch_worker(self) -> SketchWorker | None:
        settings = self.settings
        if not settings.sketch_worker:
            return None
        worker = SketchWorker(
            self.clock, settings.refresh_min_interval_s, settings.refresh_max_interval_s
        )
        await worker.start()
        self.sketch_worker = worker
        return worker

    async def _start_grpc(self) -> None:
        assert self.servicer is not None
        server = grpc.aio.server(options=self.security.grpc_options())
        add_router_to_server(self.servicer, server)
        # Health and reflection are open to all: corrupt requests are refused like the
        # Router's (INVALID_ARGUMENT, logged once per cause per interval).
        limiter = self.servicer.log_limiter
        health_service = health_pb2.DESCRIPTOR.services_by_name["Health"]
        add_guarded_service(server, health_service, self._health, health_pb2, limiter)
        enable_reflection((SERVICE_NAME, health.SERVICE_NAME), server, limiter)
        address = host_port(self.grpc_host, self.settings.grpc_port)
        check_port_free("gRPC", self.grpc_host, self.settings.grpc_port, "--grpc-port")
        try:
            self.grpc_port = self.security.add_grpc_port(server, address)
        except RuntimeError:
            self.grpc_port = 0
        if self.grpc_port == 0:
            raise bind_error("gRPC", self.grpc_host, self.settings.grpc_port, "--grpc-port")
        await server.start()
        self._grpc = server

    async def _start_http(self) -> None:
        assert self.core is not None and self.servicer is not None
        app = build_http_app(
            self.core,
            self.servicer.rpc_counter,
            middlewares=self.security.http_middlewares(),
            collectors=[
                self.security.collector(self.servicer.ledger),
                IngestCollector(self.servicer.ingestor),
                *([SketchWorkerCollector(self.sketch_worker)] if self.sketch_worker else []),
            ],
            ready=lambda: self.serving,
            not_ready_reason=lambda: self.not_ready_reason,
        )
        self.http_app = app
        install_malformed_http_limit(LogLimiter())
        # Dashboard and API requests are short; do not let keep-alive clients hold
        # shutdown for aiohttp's default 60 s.
        runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=2.0,
            keepalive_timeout=self.settings.security.connections.http_keepalive_timeout_s,
            # No route reads a body; aiohttp would otherwise read and discard an unread
            # one for 10 s after answering, on this loop, for anyone (even on /healthz).
            lingering_time=0,
        )
        await runner.setup()
        site = HttpSite(
            runner,
            self.http_host,
            self.settings.http_port,
            ssl_context=self.security.http_ssl_context(),
            handshake_timeout_s=self.settings.security.connections.http_keepalive_timeout_s,
        )
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise bind_error(
                "HTTP", self.http_host, self.settings.http_port, "--http-port"
            ) from None
        self._http = runner
        self.http_port = runner.addresses[0][1]  # the real port when 0 was asked for

    async def _start_replication(self) -> None:
        """With --redis: join the peers and load the shared state before SERVING."""
        if self.settings.replication is None:
            return
        assert self.core is not None and self.servicer is not None
        self.replicator = await start_replication(
            self.settings.replication,
            self.core,
            self.clock,
            self._data_arrived.set,
            self.http_app,
            self.servicer.ledger,
        )

    async def _set_serving(self, serving: bool) -> None:
        self.serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self._health.set("", status)
        await self._health.set(SERVICE_NAME, status)

    async def _refresh_loop(self) -> None:
        """Coalesce quantile refreshes: at most every min interval, at least every max."""
        settings = self.settings
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._data_arrived.wait(), settings.refresh_max_interval_s)
            self._data_arrived.clear()
            try:
                # One endpoint per step: RankProviders calls run in between. Each
                # step's loop time is paid from ingestion's share (Ingestor.charge):
                # it is work the outcomes made necessary.
                clock = time.perf_counter
                began = clock()
                for _ in self.core.refresh_steps() if self.core is not None else ():
                    if self.servicer is not None:
                        self.servicer.ingestor.charge(clock() - began)
                    await asyncio.sleep(0)
                    began = clock()
            except Exception:
                log.exception("quantile refresh failed")
            await asyncio.sleep(settings.refresh_min_interval_s)

    def refresh_now(self) -> None:
        assert self.core is not None
        self.core.refresh()

    def reload_catalog(self) -> bool:
        """Reload the catalog file; a bad file is refused and the old catalog kept.

        The version and the catalog come from one read (``read_catalog``). A
        refusal is logged once per distinct file content (or read error): the
        watcher's poll calls this every few seconds, and a file that stays
        missing or broken must not write the same line each time."""
        assert self.core is not None
        path = self.settings.config_path
        try:
            data = read_catalog_bytes(path)
        except CatalogError as exc:
            return self._refuse(str(exc), exc)
        version = version_of_bytes(data)
        if version == self.core.catalog_version:
            self._refused = None  # back to the loaded file: a new breakage is news
            self.core.catalog_refused = None
            return True
        if version == self._refused:
            return False  # already logged; wait for the file to change again
        try:
            catalog = parse_catalog_bytes(data, str(path))
        except CatalogError as exc:
            return self._refuse(version, exc)
        self._refused = None
        self.core.catalog_refused = None
        self.core.replace_catalog(catalog, version)
        return True

    def _refuse(self, what: str, exc: CatalogError) -> bool:
        assert self.core is not None
        self.core.catalog_refused = str(exc)
        if what != self._refused:
            log.error(
                "catalog reload refused, keeping the previous one",
                extra={"file": exc.source, "error": str(exc)},
            )
            self._refused = what
        return False

    async def _watch_catalog(self) -> None:
        """Reload when the catalog file changes (see router_service.catalog_watch)."""
        try:
            await watch_catalog(
                self.settings.config_path,
                lambda _changes: self.reload_catalog(),
                poll_s=self.settings.catalog_poll_s,
            )
        except Exception:
            log.exception("catalog watcher stopped; SIGHUP still reloads")

    async def stop(self) -> None:
        """Graceful: report NOT_SERVING, drain in-flight RPCs, then close."""
        if self._grpc is None and self._http is None:
            await self._stop_sketch_worker()  # a start that failed after starting it
            return
        self.not_ready_reason = "draining: shutting down"
        await self._set_serving(False)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            await bounded(task, 6.0, f"stop {task.get_name()}")
        self._tasks.clear()
        if self._grpc is not None:
            grace = self.settings.drain_seconds
            await bounded(self._grpc.stop(grace), grace + 5.0, "drain gRPC")
            self._grpc = None
        if self.replicator is not None:
            await bounded(self.replicator.stop(), 6.0, "stop redis replication")
            self.replicator = None
        if self._http is not None:
            await bounded(self._http.cleanup(), 5.0, "close HTTP")
            self._http = None
        await self._stop_sketch_worker()
        log.info("router stopped")

    async def _stop_sketch_worker(self) -> None:
        if self.sketch_worker is not None:
            await bounded(self.sketch_worker.stop(), 6.0, "stop the sketch worker")
            self.sketch_worker = None
