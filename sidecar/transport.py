"""The seam between the sidecar and the HTTP client that carries its upstream POSTs.

Why a seam: the sidecar's CPU per request is measured against a bare aiohttp
hop (issue 13), and aiohttp's ``ClientSession`` is a large share of each hop's
Python work. The sidecar needs only a POST, its status, a few headers and the
body as it arrives, so the client is chosen by ``--upstream-client``: ``lean``
(``sidecar.lean_http``, httptools' parser on an asyncio protocol) or
``aiohttp`` (the ClientSession it used before). Both raise aiohttp's exception
classes, so failures are classified and described alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import aiohttp
from yarl import URL

from sidecar.config import UPSTREAM_CLIENTS
from sidecar.lean_http import LeanClient


class UpstreamBody(Protocol):
    """A response body as it arrives (aiohttp's StreamReader, as the sidecar reads it)."""

    async def readany(self) -> bytes: ...

    async def read(self, n: int = -1) -> bytes: ...

    def at_eof(self) -> bool: ...


class UpstreamResponse(Protocol):
    """What the sidecar reads of an upstream response."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> UpstreamBody: ...

    @property
    def closed(self) -> bool: ...

    def release(self) -> None:
        """Done: the connection is pooled if the body was read to its end, else closed."""

    def close(self) -> None:
        """Abandon the response and close its connection (the provider stops at once)."""


class UpstreamTransport(Protocol):
    """Sends one POST; returns once status and headers are in (the body follows)."""

    async def post(
        self, url: URL, body: bytes, headers: Mapping[str, str], connect_timeout: float
    ) -> UpstreamResponse: ...

    async def close(self) -> None: ...


class AiohttpTransport:
    """The POST through aiohttp's ClientSession, configured as the sidecar always had it."""

    def __init__(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60),
            timeout=aiohttp.ClientTimeout(total=None),
            # One session serves every app request: a cookie one provider sets must
            # not ride along on another app's call (and filtering costs time per call).
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def post(
        self, url: URL, body: bytes, headers: Mapping[str, str], connect_timeout: float
    ) -> UpstreamResponse:
        timeout = self._timeouts.get(connect_timeout)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=connect_timeout, sock_connect=connect_timeout
            )
            if len(self._timeouts) < 64:
                self._timeouts[connect_timeout] = timeout
        resp: UpstreamResponse = await self._session.post(
            url,
            data=body,
            headers=headers,
            timeout=timeout,
            allow_redirects=False,  # an API that redirects a chat POST is misconfigured
        )
        return resp

    async def close(self) -> None:
        await self._session.close()


def _user_agent() -> str:
    """Named like aiohttp's (``Python/X.Y aiohttp/V``): what providers saw before."""
    import sys

    return f"Python/{sys.version_info[0]}.{sys.version_info[1]} llm-provider-router-sidecar"


def make_transport(client: str) -> UpstreamTransport:
    """The transport ``--upstream-client`` names (checked by config.check_settings)."""
    if client == "aiohttp":
        return AiohttpTransport()
    if client == "lean":  # LeanClient is the transport itself: no wrapper call per request
        return LeanClient(user_agent=_user_agent())
    raise ValueError(f"upstream_client must be one of {list(UPSTREAM_CLIENTS)}, got {client!r}")
