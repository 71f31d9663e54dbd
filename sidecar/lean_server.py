"""The sidecar's HTTP front for its hot path: chat POSTs parsed here, the rest by aiohttp.

Why: against a bare aiohttp hop (issue 13) aiohttp's *server* side (its
request handler, request object, router, middleware chain and body stream) was
~15-20 % of the sidecar's busy loop per request, for a request whose shape the
sidecar knows. This module does that request's wire work on an
``asyncio.Protocol``, as ``lean_http.py`` does for the upstream client.

What it serves itself, and nothing else: ``POST /v1/chat/completions
HTTP/1.1`` whose head is plain (header names are tokens, values have no
control characters, CRLF line ends, under aiohttp's 8190-byte line limit) with
one ``Content-Length`` and none of ``Transfer-Encoding``, ``Expect``,
``Upgrade``, ``Content-Encoding``. Any other request, from its first byte on,
is handed with the connection to aiohttp's own ``RequestHandler`` (the
transport's protocol is swapped and the bytes read so far replayed), so
other routes, chunked or compressed bodies, ``100-continue``, upgrades and
malformed requests (its 400) behave exactly as before, and that connection
stays with aiohttp. The head is checked by one regular expression rather than
httptools: handing a request over needs the byte where it began, which
httptools' parser does not report, and whatever the strict check refuses is
judged by aiohttp's own parser.

For a request it serves it keeps what aiohttp's server gave: the handler is
the app's own (its error middleware and ``_chat``), the app leaving cancels
the handler (as ``handler_cancellation=True`` did), keep-alive and pipelined
requests are answered in order, and a connection idle (or with a head arriving
too slowly) for ``client_idle_timeout_s`` is closed.

Answers: what a response says (status, reason, the app's headers) is decided
by the code that builds the aiohttp ``Response``/``LeanStreamResponse``, the
same for both servers; only the writing differs. On this front the head is
composed by ``_response_head`` with aiohttp's own rules for the headers a
server adds (``Content-Length`` or ``Transfer-Encoding: chunked``,
``Content-Type`` default, ``Date``, ``Server``, ``Connection: close``) and
serialised by aiohttp's own ``_serialize_headers`` (same bytes, same refusal
of a CR or LF in a value), then written with the first body bytes on the
transport, honouring write backpressure (``pause_writing``, then a drain
before going on). Why: aiohttp's ``prepare``/``StreamWriter`` path was ~5 % of
the busy loop per request (issue 13), for two shapes of answer. Anything else
(cookies, compression, an empty-body status, a preset ``Content-Length``, a
``Payload`` body) is written by aiohttp's ``StreamResponse`` on a
``StreamWriter`` as before.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_exceptions import ClientConnectionResetError
from aiohttp.helpers import EMPTY_BODY_STATUS_CODES, rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.http_writer import StreamWriter, _serialize_headers
from multidict import CIMultiDict, CIMultiDictProxy

log = logging.getLogger("sidecar.http")

#: The one request line served here; any other is aiohttp's from its first byte.
_REQUEST_LINE = b"POST /v1/chat/completions HTTP/1.1\r\n"
#: aiohttp's own line limit (max_line_size / max_field_size): a longer head is its to judge.
_MAX_HEAD = 8190
#: aiohttp's own limit on header lines (max_headers): more is its to refuse.
_MAX_FIELDS = 128
#: Bytes of later (pipelined) requests held while one is answered, before reading pauses.
_MAX_AHEAD = 65536
#: Header lines (CRLF-separated) whose names are tokens and whose values hold no control
#: character but HTAB (RFC 9110 5.5; no obs-fold): checked in one match per head.
_PLAIN_HEAD = re.compile(
    rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*"
    rb"(?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*)*"
)
#: Headers that make a request aiohttp's: framing, continuations, protocol switches, and
#: bodies aiohttp decompresses.
_NOT_OURS_AT = tuple(
    b"\r\n" + name + b":"
    for name in (b"transfer-encoding", b"expect", b"upgrade", b"content-encoding")
)
_LENGTH_AT = b"\r\ncontent-length:"
_CONNECTION_AT = b"\r\nconnection:"

Handler = Callable[[Any], Awaitable[web.StreamResponse]]


class LeanRequest:
    """What the app's chat handler, ``Proxy`` and aiohttp's responses read of a request.

    aiohttp's ``StreamResponse.prepare`` reads ``method``, ``version``,
    ``keep_alive``, ``headers``, ``_payload_writer`` and calls
    ``_prepare_hook``; the app reads ``content_length``, ``read()``, ``path``
    and keeps per-request values by key (``request[SERVED_BY]``).
    """

    __slots__ = (
        "_body",
        "_conn",
        "_head",
        "_headers",
        "_missing",
        "_state",
        "_waiter",
        "_writer",
        "content_length",
        "keep_alive",
        "prepared",
        "task",
    )

    method = "POST"
    path = "/v1/chat/completions"
    version = HttpVersion11

    def __init__(self, head: bytes, length: int, keep_alive: bool, conn: LeanConnection) -> None:
        self._head = head
        self._headers: CIMultiDictProxy[str] | None = None
        self.content_length = length
        self.keep_alive = keep_alive
        self.task: asyncio.Task[None] | None = None
        self._conn = conn
        self._writer: StreamWriter | None = None
        self._state: dict[Any, Any] = {}
        self._body = bytearray()
        self._missing = length
        self._waiter: asyncio.Future[None] | None = None
        #: A response was started (its headers are written or buffered in the writer).
        self.prepared = False

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The request's header fields (built on first use: the chat path reads none)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = _fields(self._head)
        return headers

    def header(self, name: bytes) -> str | None:
        """The first ``name`` (lowercase) header's value without building ``headers``:
        one C search of the lowered head (lowering keeps every offset)."""
        at = (b"\r\n" + self._head.lower()).find(b"\r\n" + name + b":")
        if at < 0:
            return None
        return _value_at(b"\r\n" + self._head, at + len(name) + 3).decode("latin-1")

    # -- per-request values (web.Request is a MutableMapping) -------------------

    def __getitem__(self, key: Any) -> Any:
        return self._state[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._state[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self._state

    def get(self, key: Any, default: Any = None) -> Any:
        return self._state.get(key, default)

    # -- body ---------------------------------------------------------------------

    def _feed(self, data: bytes | bytearray) -> bytes | bytearray:
        """Take this request's body bytes from ``data``; return what follows it."""
        take = min(self._missing, len(data))
        if take:
            self._body += data[:take]
            self._missing -= take
            if not self._missing and self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)
        return data[take:]

    async def read(self) -> bytes:
        """The whole body (the app bounds the wait: ``client_idle_timeout_s``, a 408)."""
        if self._missing:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return bytes(self._body)

    @property
    def content(self) -> LeanRequest:
        """The body stream as the app checks it (``request.content.is_eof()``)."""
        return self

    def is_eof(self) -> bool:
        """The whole body arrived (the app's check, and whether the connection can serve on)."""
        return self._missing == 0

    @property
    def _payload_writer(self) -> StreamWriter:
        """aiohttp's writer, for an answer this front does not write itself (made on use)."""
        writer = self._writer
        if writer is None:
            writer = self._writer = StreamWriter(self._conn, self._conn._loop)
        return writer

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        self.prepared = True

    def start(self, resp: web.StreamResponse) -> LeanWriter | None:
        """Begin ``resp`` as a chunked answer written here; None: aiohttp's to write."""
        keep_alive = resp.keep_alive is not False and self.keep_alive
        head = _response_head(resp, None, keep_alive)
        if head is None:
            return None
        self.prepared = True
        return LeanWriter(self._conn, head)


class LeanWriter:
    """One chunked answer on a lean connection: the head leaves with the first body bytes.

    As aiohttp's ``StreamWriter`` with headers buffered (``_send_headers_immediately``
    False): one send per ``write``, the head, chunk and terminator in one send when the
    whole answer is in ``write_eof``. After a send, a paused transport (the app reads
    slower than the answer comes) is waited for before going on.
    """

    __slots__ = ("_conn", "_eof", "_head")

    def __init__(self, conn: LeanConnection, head: bytes) -> None:
        self._conn = conn
        self._head = head
        self._eof = False

    async def write(self, data: bytes) -> None:
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        out = b"".join((self._head, b"%x\r\n" % len(data), data, b"\r\n"))
        self._head = b""
        await self._conn.send(out)

    async def write_eof(self, data: bytes = b"") -> None:
        if self._eof:
            return
        self._eof = True
        if data:
            out = b"".join((self._head, b"%x\r\n" % len(data), data, b"\r\n0\r\n\r\n"))
        else:
            out = self._head + b"0\r\n\r\n"
        self._head = b""
        await self._conn.send(out)


class LeanStreamResponse(web.StreamResponse):
    """A streamed answer: written by the lean front when its request came through it,
    by aiohttp's ``StreamWriter`` otherwise; its status and headers are the builder's,
    the same for both servers."""

    _lean: LeanWriter | None = None

    async def prepare(self, request: Any) -> Any:
        if self._lean is not None:
            return None
        if type(request) is LeanRequest and not super().prepared:
            self._lean = request.start(self)
            if self._lean is not None:
                return None
        return await super().prepare(request)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        lean = self._lean
        if lean is None:
            await super().write(data)
        else:
            await lean.write(bytes(data))

    async def write_eof(self, data: bytes = b"") -> None:
        lean = self._lean
        if lean is None:
            await super().write_eof(data)
        else:
            await lean.write_eof(data)

    @property
    def prepared(self) -> bool:
        return self._lean is not None or super().prepared


class LeanFront:
    """The listening side: one ``LeanConnection`` per accepted connection."""

    def __init__(
        self,
        handler: Handler,
        aiohttp_server: web.Server,
        idle_timeout_s: float,
        max_body_bytes: int,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.handler = handler
        #: Builds aiohttp's RequestHandler for a connection handed over (it tracks it
        #: from there: its shutdown closes it).
        self.aiohttp_server = aiohttp_server
        self.idle_timeout_s = idle_timeout_s
        #: A longer announced body is aiohttp's to refuse (413, connection closed): this
        #: front would buffer what arrives of it before the app's check runs.
        self.max_body_bytes = max_body_bytes
        self.connections: set[LeanConnection] = set()
        self.closing = False
        self._listener: asyncio.Server | None = None

    async def listen(self, host: str, port: int) -> int:
        """Listen (as aiohttp's TCPSite does: backlog 128); the port bound."""
        self._listener = await self.loop.create_server(
            lambda: LeanConnection(self), host or None, port, backlog=128, reuse_address=True
        )
        return int(self._listener.sockets[0].getsockname()[1])

    def stop_listening(self) -> None:
        if self._listener is not None:
            self._listener.close()

    def close_idle(self) -> None:
        """Shutdown begins: close connections between requests; the rest close after theirs."""
        self.closing = True
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()

    async def wait_closed(self, timeout: float) -> None:
        """After the app's drain: give requests still running ``timeout``, then close all."""
        self.closing = True
        busy = [conn.task for conn in self.connections if conn.task is not None]
        if busy:
            await asyncio.wait(busy, timeout=timeout)
        for conn in list(self.connections):
            conn.close()


class LeanConnection(BaseProtocol):
    """One app connection: requests parsed, answered in order, or handed to aiohttp."""

    def __init__(self, front: LeanFront) -> None:
        super().__init__(front.loop)
        self._front = front
        self._buf = bytearray()
        self._request: LeanRequest | None = None
        self.task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._idle_at: float | None = None
        self._reading_held = False

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._front.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._front.connections.discard(self)
        self._cancel_idle()
        task = self.task
        if task is not None and not task.done():
            task.cancel()  # the app left: stop its work, and the provider's (as aiohttp did)

    def data_received(self, data: bytes) -> None:
        req = self._request
        if req is not None and req._missing:
            data = req._feed(data)  # type: ignore[assignment]
            if not data:
                return
        self._buf += data
        if self.task is None:
            self._next()
        elif len(self._buf) > _MAX_AHEAD and not self._reading_held:
            self._reading_held = True
            self._pause_transport_reading()

    def eof_received(self) -> bool:
        return False  # half-closed by the app: close (a pending answer cannot be read)

    # -- requests ---------------------------------------------------------------

    def _next(self) -> None:
        """Start the next request in the buffer, hand the connection over, or wait."""
        buf = self._buf
        if not buf:
            return
        if self._front.closing:
            self.close()
            return
        n = min(len(buf), len(_REQUEST_LINE))
        if buf[:n] != _REQUEST_LINE[:n]:
            self._hand_over()
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD or b"\n\n" in buf:
                self._hand_over()
            return  # the rest of the head is on its way (the idle timer bounds the wait)
        if end > _MAX_HEAD:
            self._hand_over()
            return
        head = bytes(buf[len(_REQUEST_LINE) : end])
        parsed = _parse_headers(head) if head else None
        if parsed is None:
            self._hand_over()
            return
        length, keep_alive = parsed
        if length > self._front.max_body_bytes:
            self._hand_over()
            return
        del buf[: end + 4]
        self._stop_idle()
        req = LeanRequest(head, length, keep_alive, self)
        self._request = req
        if length and buf:
            rest = req._feed(buf)
            self._buf = bytearray(rest)
        self.task = req.task = self._front.loop.create_task(self._serve(req))

    async def _serve(self, req: LeanRequest) -> None:
        """One request, as aiohttp's ``_handle_request`` and ``finish_response`` ran it."""
        keep = False
        try:
            resp = await self._front.handler(req)
            if not req.prepared and await self._send_whole(req, resp):
                keep = bool(resp.keep_alive) and req.is_eof()
            elif resp.prepared or not req.prepared:
                await resp.prepare(req)  # type: ignore[arg-type]
                await resp.write_eof()
                keep = bool(resp.keep_alive) and req.keep_alive and req.is_eof()
            # else: another response was started and not ended: the body is cut; close
        except asyncio.CancelledError:
            pass  # the app left (or the shutdown's cut): nothing more can reach it
        except ConnectionError:
            pass  # the app left while its answer was written
        except Exception:
            log.exception("unhandled error serving a request")
        finally:
            self.task = None
            self._request = None
        if not keep or self._front.closing or self.transport is None:
            self.close()
            return
        if self._reading_held:
            self._reading_held = False
            self._resume_transport_reading()
        self._arm_idle()
        self._next()

    async def _send_whole(self, req: LeanRequest, resp: web.StreamResponse) -> bool:
        """Write a ``web.Response`` with its body in one send; False: aiohttp's to write."""
        if type(resp) is not web.Response or resp._compressed_body is not None:
            return False
        body = resp._body
        if body is None:
            body = b""
        elif not isinstance(body, (bytes, bytearray)):
            return False  # a Payload (a file, a stream): aiohttp's writer
        if resp._chunked or hdrs.CONTENT_LENGTH in resp._headers:
            return False
        resp._headers[hdrs.CONTENT_LENGTH] = str(len(body))  # as Response._start does
        keep_alive = resp.keep_alive is not False and req.keep_alive
        head = _response_head(resp, len(body), keep_alive)
        if head is None:
            del resp._headers[hdrs.CONTENT_LENGTH]
            return False
        req.prepared = True
        resp._eof_sent = True  # what aiohttp's write_eof marks: the answer is complete
        await self.send(head + body if body else head)
        return True

    async def send(self, data: bytes) -> None:
        """Write ``data``; when the transport asks for a pause, wait until it resumes."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ClientConnectionResetError("Cannot write to closing transport")
        transport.write(data)
        if self._paused and self.transport is not None:
            await self._drain_helper()

    def _hand_over(self) -> None:
        """Give the connection, and the bytes of the request begun, to aiohttp's handler."""
        transport = self.transport
        if transport is None:
            return
        self._cancel_idle()
        self._front.connections.discard(self)
        data = bytes(self._buf)
        self._buf.clear()
        handler = self._front.aiohttp_server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._paused:  # the transport still owes a pause_writing's resume_writing
            handler.pause_writing()
        self.transport = None
        if data:
            handler.data_received(data)

    # -- connection ---------------------------------------------------------------

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _arm_idle(self) -> None:
        """A request head is awaited from now: the connection closes if none is complete
        within the idle timeout. One timer, moved lazily: not re-armed per request."""
        loop = self._front.loop
        self._idle_at = loop.time() + self._front.idle_timeout_s
        if self._idle is None:
            self._idle = loop.call_at(self._idle_at, self._on_idle)

    def _stop_idle(self) -> None:
        """A request is being answered: no idle bound until it ends (its timer stays)."""
        self._idle_at = None

    def _cancel_idle(self) -> None:
        self._idle_at = None
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _on_idle(self) -> None:
        """No complete request head within the idle timeout: close (as aiohttp's keep-alive)."""
        self._idle = None
        deadline = self._idle_at
        if deadline is None or self.task is not None:
            return  # answering: _arm_idle starts a new timer when the answer is done
        loop = self._front.loop
        if loop.time() < deadline:
            self._idle = loop.call_at(deadline, self._on_idle)
            return
        self.close()


def _response_head(resp: web.StreamResponse, length: int | None, keep_alive: bool) -> bytes | None:
    """The status line and headers aiohttp's ``prepare`` would send for ``resp`` on an
    HTTP/1.1 POST, as bytes; None for what only aiohttp's writer does (cookies,
    compression, an empty-body status, a preset length on a chunked answer).

    ``length`` None: chunked. The headers added are aiohttp's, in its order
    (``StreamResponse._prepare_headers``); ``resp.headers`` and ``resp.keep_alive``
    end as aiohttp leaves them. Serialised by aiohttp's own function.
    """
    status = resp.status
    if resp._cookies or resp._compression or status in EMPTY_BODY_STATUS_CODES:
        return None
    headers = resp._headers
    if length is None:
        if hdrs.CONTENT_LENGTH in headers:
            return None
        headers[hdrs.TRANSFER_ENCODING] = "chunked"
    if length != 0:
        headers.setdefault(hdrs.CONTENT_TYPE, "application/octet-stream")
    if hdrs.DATE not in headers:
        headers[hdrs.DATE] = rfc822_formatted_time()
    headers.setdefault(hdrs.SERVER, SERVER_SOFTWARE)
    if not keep_alive and hdrs.CONNECTION not in headers:
        headers[hdrs.CONNECTION] = "close"
    resp._keep_alive = keep_alive
    head: bytes = _serialize_headers(f"HTTP/1.1 {status} {resp.reason}", headers)
    return head


def _parse_headers(head: bytes) -> tuple[int, bool] | None:
    """Content-Length and keep-alive of a plain head; None: aiohttp's to judge.

    Once the head is known plain (every line ``token:value``), a header is found by
    searching the lowered head for ``CRLF name:``: a few C searches instead of a
    Python loop over every line; the fields themselves are built only if read
    (``LeanRequest.headers``).
    """
    if head.count(b"\r\n") >= _MAX_FIELDS or _PLAIN_HEAD.fullmatch(head) is None:
        return None  # a bare CR or LF, a control character, an obs-fold, a non-token name
    lower = b"\r\n" + head.lower()
    for needle in _NOT_OURS_AT:
        if needle in lower:
            return None
    at = lower.find(_LENGTH_AT)
    if at < 0 or lower.find(_LENGTH_AT, at + 1) >= 0:
        return None
    value = _value_at(lower, at + len(_LENGTH_AT))
    if not value.isdigit() or len(value) > 18:
        return None
    length = int(value)
    keep_alive = True
    at = lower.find(_CONNECTION_AT)
    while at >= 0:
        at += len(_CONNECTION_AT)
        tokens = {t.strip() for t in _value_at(lower, at).split(b",")}
        if b"upgrade" in tokens:
            return None
        if b"close" in tokens:
            keep_alive = False
        at = lower.find(_CONNECTION_AT, at)
    return length, keep_alive


def _value_at(head: bytes, start: int) -> bytes:
    """The value of the header line whose colon ends at ``start``, without its blanks."""
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip(b" \t")


def _fields(head: bytes) -> CIMultiDictProxy[str]:
    """The header fields of a plain head (checked by ``_parse_headers``), as aiohttp's."""
    fields: list[tuple[str, str]] = []
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        fields.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return CIMultiDictProxy(CIMultiDict(fields))
