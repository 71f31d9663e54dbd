"""How the router listens: addresses (protected mode), TLS, gRPC limits, file limits.

* **Protected mode** (like Redis's): with no tokens and no client CA nothing
  authenticates callers, so the router binds loopback only and says so, unless
  ``--allow-unauthenticated`` is given.
* **TLS** certificates reload on change: gRPC asks for a new configuration
  before each handshake (cheap: a few ``stat`` calls), the HTTP side's
  ``SSLContext`` is re-loaded by the app's poller.
* **One router per port**: SO_REUSEPORT is off, so a second router on a taken
  port fails to bind and exits 2 with one line naming the port and its flag.
* **Resource bounds**: soft RLIMIT_NOFILE raised to the hard limit; gRPC
  connections and streams bounded (see :func:`grpc_server_options`).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web

from router_common import fd_limit
from router_common.file_stamp import Stamp, files_stamp
from router_common.tls_files import TlsPairError, load_ca, load_pair

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class PortInUseError(OSError):
    """A port is taken; the message is the one line the CLI prints."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: str
    key: str
    client_ca: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Bounds on gRPC connections and streams.

    ================================  =======  ==========================================
    field                             default  why
    ================================  =======  ==========================================
    max_concurrent_streams            256      per connection; a sidecar needs a handful
    max_connection_idle_s             300      an idle connection is closed (GOAWAY)
    max_connection_age_s              3600     connections are recycled, spreading load
                                               after a rollout
    max_connection_age_grace_s        30       in-flight calls finish after GOAWAY
    keepalive_time_s                  60       the router pings idle clients ...
    keepalive_timeout_s               20       ... and drops those that do not answer
    min_client_ping_interval_s        10       clients pinging more often are dropped
    handshake_timeout_s               10       a connection that never completes its
                                               HTTP/2 (or TLS) handshake is closed, so
                                               idle sockets cannot pin file descriptors
    http_keepalive_timeout_s          15       an idle HTTP keep-alive connection closes,
                                               and so does an unfinished TLS handshake
    idle_stream_timeout_s             60       a StreamOutcomes call that sends nothing
                                               for this long ends (DEADLINE_EXCEEDED)
    ================================  =======  ==========================================
    """

    max_concurrent_streams: int = 256
    max_connection_idle_s: float = 300.0
    max_connection_age_s: float = 3600.0
    max_connection_age_grace_s: float = 30.0
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    min_client_ping_interval_s: float = 10.0
    handshake_timeout_s: float = 10.0
    http_keepalive_timeout_s: float = 15.0
    idle_stream_timeout_s: float = 60.0


def grpc_server_options(limits: ConnectionLimits) -> list[tuple[str, int]]:
    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
        ("grpc.max_connection_idle_ms", ms(limits.max_connection_idle_s)),
        ("grpc.max_connection_age_ms", ms(limits.max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", ms(limits.max_connection_age_grace_s)),
        ("grpc.keepalive_time_ms", ms(limits.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", ms(limits.keepalive_timeout_s)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(limits.min_client_ping_interval_s)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.server_handshake_timeout_ms", ms(limits.handshake_timeout_s)),
    ]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def protected_host(host: str, authenticated: bool, allow_unauthenticated: bool) -> str:
    """The address to bind: ``host``, or loopback when nothing authenticates callers."""
    if authenticated or allow_unauthenticated or is_loopback(host):
        return host
    log.warning(
        "protected mode: no --auth-tokens and no --tls-client-ca, so listening on "
        "loopback only; pass --allow-unauthenticated to listen on %s without authentication",
        host,
        extra={"requested_host": host, "listening_on": LOOPBACK},
    )
    return LOOPBACK


def raise_file_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (shared with the sidecar); logs and returns
    (before, after) soft."""
    return fd_limit.raise_file_limit(log)


class _Stamped:
    """File contents re-read when their stamps (``router_common.file_stamp``) change."""

    def __init__(self, *paths: str) -> None:
        self.paths = [Path(p) for p in paths]
        self.stamp: tuple[Stamp, ...] | None = None

    def changed(self) -> bool:
        stamp = files_stamp(self.paths)
        if stamp is None or stamp == self.stamp:
            return False  # None: mid-swap, keep the current files
        self.stamp = stamp
        return True


def grpc_server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """TLS (mTLS with a client CA) whose files are re-read when they change."""
    files = [tls.cert, tls.key] + ([tls.client_ca] if tls.client_ca else [])
    watch = _Stamped(*files)

    def load() -> grpc.ServerCertificateConfiguration:
        key = Path(tls.key).read_bytes()
        cert = Path(tls.cert).read_bytes()
        ca = Path(tls.client_ca).read_bytes() if tls.client_ca else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    watch.changed()
    initial = load()

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        if not watch.changed():
            return None
        try:
            # gRPC core takes any bytes here; a key that does not match the
            # certificate (a rotation written key first) or a truncated file it
            # only refuses later, with plain-text lines on stderr, after this
            # had logged "reloaded". The HTTP side's check says so first.
            tls_context(tls)
            config = load()
        except OSError as exc:
            log.error(
                "TLS files unusable, keeping the previous ones",
                extra={"port": "grpc", "error": str(exc)},
            )
            return None
        log.info("TLS certificates reloaded", extra={"port": "grpc"})
        return config

    # gRPC documents None as "keep the current configuration"; the stub omits it.
    return grpc.dynamic_ssl_server_credentials(
        initial,
        fetch,  # type: ignore[arg-type]
        require_client_authentication=tls.client_ca is not None,
    )


class TlsFileError(OSError):
    """A TLS file that cannot be used, named with its flag (one line at start)."""


def tls_context(tls: TlsFiles) -> ssl.SSLContext:
    """A server context from the files; TlsFileError names the flag and file (ssl's own
    text, ``[SSL] PEM lib (_ssl.c:3905)`` or a bare ``[Errno 2]``, names neither)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        load_pair(context, tls.cert, tls.key, "--tls-cert", "--tls-key", "router")
        if tls.client_ca:
            load_ca(context, tls.client_ca, "--tls-client-ca")
    except TlsPairError as exc:
        raise TlsFileError(str(exc)) from None
    if tls.client_ca:
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


class HttpTls:
    """The HTTP side's TLS; ``maybe_reload`` builds a new ``SSLContext`` from changed
    files and new connections switch to it. A client certificate is optional here so
    probes reach /healthz; when presented it must chain to the client CA.

    Why a new context per reload: the server holds the context it was started with,
    and loading a changed CA file into that one only *adds* to its trust store, so a
    CA removed from ``--tls-client-ca`` stayed trusted until a restart. The server's
    context therefore only hands each handshake over to the current one (its SNI
    callback runs for every ClientHello, with or without a server name)."""

    def __init__(self, tls: TlsFiles) -> None:
        self.tls = tls
        self._watch = _Stamped(*([tls.cert, tls.key] + ([tls.client_ca] if tls.client_ca else [])))
        self._watch.changed()
        self.current = self._build()
        #: The context the server listens with: the first one, switching each
        #: handshake to ``current``.
        self.context = self.current
        self.context.sni_callback = self._switch

    def _switch(self, ssl_object: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        if ssl_object.context is not self.current:
            ssl_object.context = self.current

    def _build(self) -> ssl.SSLContext:
        return tls_context(self.tls)

    def maybe_reload(self) -> None:
        if self._watch.changed():
            try:
                self.current = self._build()
            except (OSError, ssl.SSLError) as exc:
                log.error(
                    "TLS files unusable, keeping the previous ones",
                    extra={"port": "http", "error": str(exc)},
                )
                return
            log.info("TLS certificates reloaded", extra={"port": "http"})


class HttpSite(web.TCPSite):
    """aiohttp's TCPSite with the TLS handshake bounded by the HTTP idle timeout.

    Why: asyncio gives a TLS handshake 60 s by default and aiohttp's idle
    (keep-alive) timeout only starts once it is done, so with TLS on a socket
    that never finished its handshake held a descriptor 60 s instead of the
    15 s every other idle HTTP connection gets.
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        handshake_timeout_s: float,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, reuse_port=False)
        self.handshake_timeout_s = handshake_timeout_s

    async def start(self) -> None:
        if self._ssl_context is None:
            await super().start()
            return
        # TCPSite.start, plus ssl_handshake_timeout (TCPSite takes no such argument).
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl_handshake_timeout=self.handshake_timeout_s,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


def _probe(host: str, port: int) -> OSError | None:
    """Try to bind as the server would (SO_REUSEADDR, no SO_REUSEPORT); the error, if any."""
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return exc
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        return exc
    return None


def bind_error(what: str, host: str, port: int, flag: str) -> PortInUseError:
    """One line naming the port and the flag that sets it; says why when it can tell."""
    exc = _probe(host, port)
    if exc is not None and exc.errno == errno.EADDRINUSE:
        why = "is already in use"
    elif exc is not None:
        why = f"cannot be bound ({exc.strerror or exc})"
    else:
        why = "cannot be bound"
    return PortInUseError(f"{what} port {port} on {host} {why}; set another with {flag}")


def check_port_free(what: str, host: str, port: int, flag: str) -> None:
    """Fail before the server tries (gRPC would also print its own multi-part error)."""
    if port != 0 and _probe(host, port) is not None:
        raise bind_error(what, host, port, flag)
