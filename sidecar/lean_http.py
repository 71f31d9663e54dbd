"""A lean HTTP/1.1 client for the sidecar's upstream POSTs (issue 13).

Why: aiohttp's ``ClientSession`` builds a request object, a response object,
a tracing context, cookie and header merges and a body-writer task for every
call; the sidecar uses none of that (one POST with a fixed header set, no
redirects, no cookies, no proxies). This client does the same wire work with
an ``asyncio.Protocol`` and httptools' C parser (llhttp, the parser uvicorn
uses): a keep-alive pool per (scheme, host, port), TLS through asyncio's ssl
with certificate verification, chunked and content-length bodies.

What the sidecar sees is kept as it was with aiohttp: ``status``,
``headers.get``, ``content.readany/read/at_eof``, ``release``/``close``/
``closed``, and failures raised as the same aiohttp exception classes
(``ClientConnectorError``, ``ConnectionTimeoutError``,
``ServerDisconnectedError``, ``ClientPayloadError``, ``ClientResponseError``),
so the error classification and the texts in ``routing.attempts`` are
unchanged.
"""

from __future__ import annotations

import asyncio
import select
import ssl
import time
import zlib
from collections.abc import Mapping
from typing import Any

import httptools
from aiohttp import (
    ClientConnectorCertificateError,
    ClientConnectorError,
    ClientConnectorSSLError,
    ClientPayloadError,
    ClientResponseError,
    ConnectionTimeoutError,
    ServerDisconnectedError,
)
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from router_common.json_text import as_json

#: An idle pooled connection older than this is closed rather than reused
#: (aiohttp's default keep-alive, so providers see the same connection lifetimes).
KEEPALIVE_S = 15.0
#: Response header bytes accepted before the response is refused as garbled.
MAX_HEADER_BYTES = 64 * 1024
#: Buffered body bytes above which the socket stops being read (until the sidecar reads).
_HIGH_WATER = 256 * 1024

_EMPTY: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def _ssl_context() -> ssl.SSLContext:
    """As aiohttp's verified default: the system's CAs, hostname checked, HTTP/1.1 by ALPN."""
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(("http/1.1",))
    return ctx


class LeanResponse:
    """One response: status and headers at once, the body as it arrives.

    ``content`` is the response itself (the sidecar reads ``resp.content``
    as it did with aiohttp).
    """

    __slots__ = (
        "_buf",
        "_conn",
        "_eof",
        "_exc",
        "_headers",
        "_paused",
        "_raw",
        "_size",
        "_waiter",
        "closed",
        "status",
    )

    def __init__(self, conn: _Conn, status: int, raw: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self._raw = raw
        self._headers: CIMultiDictProxy[str] | None = None
        self._conn: _Conn | None = conn
        self._buf: list[bytes] = []
        self._size = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self._paused = False

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """Built on first use: a streamed success never looks at them."""
        if self._headers is None:
            if not self._raw:
                self._headers = _EMPTY
            else:
                self._headers = CIMultiDictProxy(
                    CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in self._raw)
                )
        return self._headers

    @property
    def content(self) -> LeanResponse:
        return self

    def __del__(self) -> None:
        # Dropped mid-body without close(): the connection cannot be reused (as aiohttp).
        if self._conn is not None:
            self._conn.abort()

    # -- fed by the connection ------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._buf.append(data)
        self._size += len(data)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self._size > _HIGH_WATER and not self._paused and self._conn is not None:
            self._paused = True
            self._conn.pause()

    def _end(self, exc: BaseException | None) -> None:
        if exc is None:
            self._eof = True
        elif not self._eof and self._exc is None:
            self._exc = exc
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- read by the sidecar --------------------------------------------------

    def at_eof(self) -> bool:
        return self._eof and not self._buf

    async def readany(self) -> bytes:
        """Everything buffered, waiting for some if none; b"" at the end of the body."""
        while not self._buf:
            if self._eof:
                return b""
            if self._exc is not None:
                raise self._exc
            if self.closed:
                raise ClientPayloadError("Connection closed")
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        buf = self._buf
        data = buf[0] if len(buf) == 1 else b"".join(buf)
        self._buf = []
        self._size = 0
        if self._paused:
            self._paused = False
            if self._conn is not None:
                self._conn.resume()
        return data

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (``-1``: to the end of the body)."""
        if n < 0:
            parts: list[bytes] = []
            while True:
                part = await self.readany()
                if not part:
                    return b"".join(parts)
                parts.append(part)
        data = await self.readany()
        if len(data) > n:
            self._buf.insert(0, data[n:])
            self._size += len(data) - n
            data = data[:n]
        return data

    def release(self) -> None:
        """Done with the response. As with aiohttp, a body that arrived to its end
        already gave its connection back to the pool (and ``closed`` is True); one
        that did not cannot serve another request, so its connection is closed."""
        self.close()

    def close(self) -> None:
        """Abandon the response: its connection is closed (the provider stops sending)."""
        self.closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()


class _Conn(asyncio.Protocol):
    """One keep-alive connection: the parser's callbacks feed the current response."""

    def __init__(self, client: LeanClient, key: tuple[str, str, int]) -> None:
        self.client = client
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.idle_since = 0.0
        # The response in progress.
        self.raw: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.head: asyncio.Future[LeanResponse] | None = None
        self.resp: LeanResponse | None = None
        self.until_close = False
        self.keep_alive = False
        self.interim = False
        self.decoder: Any = None

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.head is None and self.resp is None:
            self.abort()  # bytes nobody asked for: the connection is not reusable
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ClientResponseError(None, (), message="unexpected upgrade"))  # type: ignore[arg-type]
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised (headers too large) in its own
            # "User callback error", the callback's exception as the context.
            own = exc.__context__
            if not isinstance(own, ClientResponseError):
                own = ClientResponseError(None, (), status=400, message=f"invalid response: {exc}")  # type: ignore[arg-type]
            self._fail(own)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.head is not None:
            head, self.head = self.head, None
            if not head.done():
                head.set_exception(ServerDisconnectedError())
        resp, self.resp = self.resp, None
        if resp is not None:
            if self.until_close and exc is None:
                self._flush_decoder(resp)
                resp._end(None)
            else:
                resp._end(ClientPayloadError("Response payload is not completed"))
        self.client._forget(self)

    # -- httptools callbacks ------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise ClientResponseError(None, (), status=400, message="response headers too large")  # type: ignore[arg-type]
        self.raw.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim response (100 Continue): the real one follows
            self.interim = True
            self.raw = []
            return
        raw, self.raw = self.raw, []
        chunked = has_length = False
        for name, value in raw:
            lname = name.lower()
            if lname == b"content-length":
                has_length = True
            elif lname == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif lname == b"content-encoding":
                enc = value.strip().lower()
                if enc in (b"gzip", b"x-gzip"):
                    self.decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                elif enc == b"deflate":
                    self.decoder = zlib.decompressobj()
        self.until_close = not chunked and not has_length and status not in (204, 304)
        # Asked now: llhttp answers False once the message is complete.
        self.keep_alive = not self.until_close and self.parser.should_keep_alive()
        head, self.head = self.head, None
        if head is None or head.done():  # nobody waits (cancelled): drop the connection
            self.abort()
            return
        resp = LeanResponse(self, status, raw)
        self.resp = resp
        head.set_result(resp)

    def on_body(self, body: bytes) -> None:
        resp = self.resp
        if resp is None:
            return
        if self.decoder is not None:
            try:
                body = self.decoder.decompress(body)
            except zlib.error:
                self._fail(ClientPayloadError("Can not decode content-encoding"))
                return
            if not body:
                return
        resp._feed(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        resp, self.resp = self.resp, None
        if resp is not None:
            self._flush_decoder(resp)
            resp._end(None)
            # As aiohttp does at the end of a body: the response is released (its
            # buffered bytes stay readable) and the connection pooled at once.
            resp._conn = None
            resp.closed = True
        self._recycle()

    # -- helpers ------------------------------------------------------------------

    def _flush_decoder(self, resp: LeanResponse) -> None:
        if self.decoder is not None:
            try:
                tail = self.decoder.flush()
            except zlib.error:
                tail = b""
            self.decoder = None
            if tail:
                resp._feed(tail)

    def _fail(self, exc: BaseException) -> None:
        if self.head is not None:
            head, self.head = self.head, None
            if not head.done():
                head.set_exception(exc)
        resp, self.resp = self.resp, None
        if resp is not None:
            resp._end(exc)
        self.abort()

    def pause(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()

    def dropped(self) -> bool:
        """Has the server closed (or written on) this idle connection, unseen so far?

        Its FIN (or anything else: an idle connection has nothing to read) may
        already be in the kernel while the event loop has not yet handed it to
        ``connection_lost``, e.g. a server that closes right after its response
        without saying ``Connection: close``. A request sent on it would fail as
        a connect error held against the provider; one poll of the socket (as
        urllib3 does before reusing a connection) finds it first.
        """
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return True
        try:
            readable, _, _ = select.select([sock.fileno()], (), (), 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def abort(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()

    def _recycle(self) -> None:
        """A response ended: pool the connection if the server keeps it alive.

        The parser is kept: llhttp reads one message after another on a connection.
        """
        if self.lost or not self.keep_alive or self.client.closed or self.transport is None:
            self.abort()
            return
        self.decoder = None
        self.header_bytes = 0
        if not self.transport.is_reading():  # paused by a large body the sidecar read late
            self.transport.resume_reading()
        self.idle_since = time.monotonic()
        self.client._pool(self)

    def send(self, data: bytes, head: asyncio.Future[LeanResponse]) -> None:
        self.head = head
        assert self.transport is not None
        self.transport.write(data)


def _close_unwanted(dial: asyncio.Task[_Conn]) -> None:
    """The caller of a dial left before it finished: close what it connected."""
    if dial.cancelled() or dial.exception() is not None:
        return  # nothing connected (the failure is the caller's no more: it left)
    dial.result().abort()


class LeanClient:
    """POSTs over pooled keep-alive connections; one per sidecar."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, user_agent: str = "") -> None:
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        #: Every open connection, idle or in use (closed with the client).
        self._all: set[_Conn] = set()
        #: Encoded request heads (request line, Host, the sidecar's headers) per
        #: (URL, header set): a handful of providers times a handful of keys.
        self._heads: dict[tuple[URL, tuple[tuple[str, str], ...]], bytes] = {}
        self._ua = user_agent
        self.closed = False
        #: The sweep that closes connections idle past KEEPALIVE_S (while any is pooled).
        self._sweep: asyncio.TimerHandle | None = None

    async def post(
        self,
        url: URL,
        body: bytes,
        headers: Mapping[str, str],
        connect_timeout: float | None = None,
    ) -> LeanResponse:
        """Send the POST and return once the response's status and headers are in."""
        if self.closed:
            raise RuntimeError("Session is closed")
        hkey = (url, tuple(headers.items()))
        head = self._heads.get(hkey)
        if head is None:
            head = self._encode_head(url, headers)
        key = (url.scheme, url.raw_host or "", url.port or 0)
        conn = self._take(key)
        if conn is None:
            conn = await self._connect(key, connect_timeout)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[LeanResponse] = loop.create_future()
        try:
            conn.send(b"%s%d\r\n\r\n%s" % (head, len(body), body), fut)
            return await fut
        except BaseException:
            conn.abort()  # cancelled or broken before the headers: stop the provider now
            raise

    def _encode_head(self, url: URL, headers: Mapping[str, str]) -> bytes:
        host = url.raw_host or ""
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        if not url.is_default_port():
            host = f"{host}:{url.port}"
        lines = [f"POST {url.raw_path_qs or '/'} HTTP/1.1", f"Host: {host}"]
        if self._ua and "user-agent" not in {k.lower() for k in headers}:
            lines.append(f"User-Agent: {self._ua}")
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"upstream header {as_json(name)} holds a line break")
            lines.append(f"{name}: {value}")
        lines.append("Content-Length: ")
        head = "\r\n".join(lines).encode("latin-1")
        if len(self._heads) < 256:
            self._heads[(url, tuple(headers.items()))] = head
        return head

    def _take(self, key: tuple[str, str, int]) -> _Conn | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.lost:
                continue
            if now - conn.idle_since > KEEPALIVE_S or conn.dropped():
                conn.abort()
                continue
            return conn
        return None

    async def _connect(self, key: tuple[str, str, int], timeout: float | None) -> _Conn:
        """A new connection; the dial itself is never cancelled by the caller.

        Why: a caller cancelled while ``create_connection`` dials (the app left,
        a hedge lost, a first-token deadline) cancels asyncio's happy-eyeballs
        race, which drops the socket it had just connected into a reference
        cycle (CPython 3.11's ``staggered_race``): the descriptor stayed open, an
        ESTABLISHED socket to the provider with nothing sent, until the next
        full garbage collection, which an idle sidecar (its heap frozen) may
        not run for hours. So the dial runs in its own task, bounded by the
        connect timeout, and a caller that leaves has the finished connection
        closed instead of abandoned.
        """
        dial = asyncio.get_running_loop().create_task(self._dial(key, timeout))
        try:
            return await asyncio.shield(dial)
        except asyncio.CancelledError:
            dial.add_done_callback(_close_unwanted)
            raise

    async def _dial(self, key: tuple[str, str, int], timeout: float | None) -> _Conn:
        scheme, host, port = key
        tls = scheme == "https"
        if tls and self._ssl is None:
            self._ssl = _ssl_context()
        loop = asyncio.get_running_loop()
        ckey = ConnectionKey(host, port, tls, tls, None, None, None)
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self, key),
                    host,
                    port,
                    ssl=self._ssl if tls else None,
                    server_hostname=host if tls else None,
                    happy_eyeballs_delay=0.25,
                )
        except TimeoutError as exc:
            raise ConnectionTimeoutError(f"Connection timeout to host {host}:{port}") from exc
        except ssl.SSLCertVerificationError as exc:
            raise ClientConnectorCertificateError(ckey, exc) from exc
        except ssl.SSLError as exc:
            raise ClientConnectorSSLError(ckey, exc) from exc
        except OSError as exc:
            raise ClientConnectorError(ckey, exc) from exc
        if self.closed:
            conn.abort()
            raise RuntimeError("Session is closed")
        self._all.add(conn)
        return conn

    def _pool(self, conn: _Conn) -> None:
        self._idle.setdefault(conn.key, []).append(conn)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(KEEPALIVE_S, self._close_expired)

    def _close_expired(self) -> None:
        """Close what idled past KEEPALIVE_S, as aiohttp's connector does (a provider
        used rarely would otherwise keep sockets open until its server drops them)."""
        self._sweep = None
        now = time.monotonic()
        for key, idle in list(self._idle.items()):
            keep = []
            for conn in idle:
                if now - conn.idle_since > KEEPALIVE_S:
                    conn.abort()
                elif not conn.lost:
                    keep.append(conn)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if self._idle and not self.closed:
            self._sweep = asyncio.get_running_loop().call_later(KEEPALIVE_S, self._close_expired)

    def _forget(self, conn: _Conn) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def close(self) -> None:
        """Close every connection, idle or in use."""
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._idle.clear()
        for conn in list(self._all):
            conn.abort()
        self._all.clear()
