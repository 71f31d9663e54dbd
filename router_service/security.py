"""The router's security and resource settings, and the one object the app asks about them.

Kept apart from ``app.py`` so the app only asks: which host may I bind, which
gRPC options and credentials, which HTTP middleware and TLS context. See
:mod:`router_service.auth` (callers and scopes), :mod:`router_service.callers`
(rate limits, batch ids) and :mod:`router_service.listen` (protected mode,
TLS reload, connection bounds).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from dataclasses import dataclass, field

import grpc

from router_common.domain import Clock
from router_service.auth import Authenticator, TokenStore
from router_service.caller_metrics import CallerCollector
from router_service.callers import CallerLedger, CallerLimitsConfig
from router_service.http_auth import http_auth_middleware
from router_service.listen import (
    ConnectionLimits,
    HttpTls,
    TlsFiles,
    grpc_server_credentials,
    grpc_server_options,
    protected_host,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    """Authentication, TLS and bounds (the CLI fills these from flags/env)."""

    #: Tokens file (``--auth-tokens``); None = no tokens.
    auth_tokens: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    #: CA for client certificates: mTLS, callers named by their certificate.
    tls_client_ca: str | None = None
    #: Listen beyond loopback with no authentication (protected mode off).
    allow_unauthenticated: bool = False
    #: How often the tokens file and TLS files are checked for changes.
    reload_interval_s: float = 1.0
    caller_limits: CallerLimitsConfig = field(default_factory=CallerLimitsConfig)
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")

    @property
    def tls(self) -> TlsFiles | None:
        if self.tls_cert and self.tls_key:
            return TlsFiles(self.tls_cert, self.tls_key, self.tls_client_ca)
        return None


class RouterSecurity:
    """Built once per start: the token store, authenticator and TLS material."""

    def __init__(self, settings: SecuritySettings, clock: Clock) -> None:
        self.settings = settings
        self.tokens = TokenStore(settings.auth_tokens) if settings.auth_tokens else None
        self.authenticator = Authenticator(self.tokens, mtls=bool(settings.tls_client_ca))
        self._http_tls = HttpTls(settings.tls) if settings.tls else None
        self.http_refusals: Counter[str] = Counter()
        self._clock = clock

    def bind_host(self, host: str) -> str:
        return protected_host(host, self.authenticator.enabled, self.settings.allow_unauthenticated)

    def ledger(self, clock: Clock) -> CallerLedger:
        return CallerLedger(self.settings.caller_limits, clock)

    def grpc_options(self) -> list[tuple[str, int]]:
        return grpc_server_options(self.settings.connections)

    def add_grpc_port(self, server: grpc.aio.Server, address: str) -> int:
        tls = self.settings.tls
        if tls is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, grpc_server_credentials(tls))

    def http_middlewares(self) -> list:
        return [http_auth_middleware(self.authenticator, self.http_refusals)]

    def http_ssl_context(self) -> ssl.SSLContext | None:
        return self._http_tls.context if self._http_tls else None

    def collector(self, ledger: CallerLedger) -> CallerCollector:
        return CallerCollector(ledger, self.http_refusals)

    async def reload_loop(self) -> None:
        """Poll the tokens file and the HTTP TLS files (gRPC TLS polls per handshake)."""
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            try:
                if self.tokens is not None:
                    self.tokens.maybe_reload()
                if self._http_tls is not None:
                    self._http_tls.maybe_reload()
            except Exception:
                log.exception("credential reload failed; keeping the current ones")
