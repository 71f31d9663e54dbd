"""The sidecar's gRPC channel to the router: TLS/mTLS and a bearer token.

The token is read from a file (``--router-token-file``, e.g. a Kubernetes
Secret volume) and re-read when the file changes, checked at most once a
second, so rotating the Secret needs no restart. It is added to every call's
metadata by a client interceptor and never logged. TLS uses ``--router-ca``
to verify the router and, for mTLS, ``--router-tls-cert``/``--router-tls-key``
as the sidecar's identity; all three are re-read when they change
(:class:`ReloadingChannel`). A token
without TLS is a warning at start: it crosses the network in clear text.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from router_common.file_stamp import Stamp, file_stamp, files_stamp
from router_common.tls_files import load_ca, load_pair

log = logging.getLogger("sidecar.router_channel")


class TokenFile:
    """A token file's content, re-read when its (mtime, inode, size) changes."""

    def __init__(self, path: str, check_every_s: float = 1.0) -> None:
        self.path = Path(path)
        self.check_every_s = check_every_s
        self._stamp: Stamp | None = None
        self._checked = float("-inf")
        self.token = ""
        self._reload()
        if not self.token:
            raise ValueError(
                f"--router-token-file {path}: empty, unreadable or not printable ASCII"
            )

    def _reload(self) -> None:
        try:
            stamp = file_stamp(self.path)
            if stamp is None or stamp != self._stamp:  # None: the read says why
                # utf-8-sig: a byte order mark (Windows editors) is not part of the token.
                token = self.path.read_text(encoding="utf-8-sig").strip()
                if token and not all(" " <= ch <= "~" for ch in token):
                    # gRPC refuses such a metadata value in the client ("Illegal
                    # header value"), so every call would fail with an opaque error.
                    raise ValueError("the token is not printable ASCII")
                if token:
                    self.token, self._stamp = token, stamp
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            log.warning(
                "router token file unreadable; keeping the last token", extra={"why": str(exc)}
            )

    def current(self) -> str:
        now = time.monotonic()
        if now - self._checked >= self.check_every_s:
            self._checked = now
            self._reload()
        return self.token


def _with_token(details: grpc.aio.ClientCallDetails, token: TokenFile) -> Any:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add("authorization", f"Bearer {token.current()}")
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# grpc.aio files each interceptor under the first call kind it matches, so
# one class per kind (the sidecar makes unary calls and one client stream).
class _UnaryToken(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: TokenFile) -> None:
        self._token = token

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._token), request)


class _StreamToken(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, token: TokenFile) -> None:
        self._token = token

    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_token(details, self._token), request_iterator)


def _read(path: str | None, flag: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: {exc.strerror or exc}") from None


def check_tls_files(ca: str | None, cert: str | None, key: str | None) -> None:
    """ValueError (one line naming the flag and file) unless the files load together.

    Why here: gRPC takes any bytes for these and only fails when it dials, on
    every attempt, as ``UNAVAILABLE: Failed to create security handshaker`` with
    plain-text lines on stderr (``Invalid private key``, ``Could not load any
    root certificate``), while the sidecar had started and served from its
    fallback. Python's ssl reads the same PEM, so a pair it refuses gRPC refuses.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        load_ca(context, ca, "--router-ca")
    if cert and key:
        load_pair(context, cert, key, "--router-tls-cert", "--router-tls-key", "sidecar")


class _Rebinding:
    """A stub's multicallable that calls through the router channel current at call time."""

    def __init__(self, owner: ReloadingChannel, kind: str, args: tuple[Any, ...], kwargs: Any):
        self._owner, self._kind, self._args, self._kwargs = owner, kind, args, kwargs
        self._bound: tuple[grpc.aio.Channel, Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel = self._owner.current()
        if self._bound is None or self._bound[0] is not channel:
            factory = getattr(channel, self._kind)
            self._bound = (channel, factory(*self._args, **self._kwargs))
        return self._bound[1](*args, **kwargs)


class ReloadingChannel(grpc.aio.Channel):
    """The router channel, rebuilt when ``--router-ca``, ``--router-tls-cert`` or
    ``--router-tls-key`` change (checked at most once a second, on use).

    Why: gRPC's Python client credentials are fixed when a channel is made, so a
    sidecar read its certificate once; a cert-manager renewal (or a CA rotation)
    left it presenting the old certificate until it expired and every router call
    failed. Stubs made on this channel call through whichever channel is current;
    the previous one gets ``retire_grace_s`` for calls in flight. Files that do not
    load together (a rotation half-written) are refused, logged once, and the
    current channel stays.
    """

    def __init__(
        self,
        address: str,
        options: Sequence[tuple[str, Any]],
        interceptors: list[Any] | None,
        ca: str | None,
        cert: str | None,
        key: str | None,
        check_every_s: float = 1.0,
        retire_grace_s: float = 30.0,
    ) -> None:
        self._address, self._options, self._interceptors = address, list(options), interceptors
        self._ca, self._cert, self._key = ca, cert, key
        self._paths = [p for p in (ca, cert, key) if p]
        self.check_every_s, self.retire_grace_s = check_every_s, retire_grace_s
        self._checked = time.monotonic()
        self._stamp = files_stamp(self._paths)
        check_tls_files(ca, cert, key)
        self._channel = self._build()
        self._retiring: set[asyncio.Task[None]] = set()
        self._retired: set[grpc.aio.Channel] = set()

    def _build(self) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(self._ca, "--router-ca"),
            private_key=_read(self._key, "--router-tls-key"),
            certificate_chain=_read(self._cert, "--router-tls-cert"),
        )
        return grpc.aio.secure_channel(
            self._address, credentials, options=self._options, interceptors=self._interceptors
        )

    def current(self) -> grpc.aio.Channel:
        """The channel to call through, rebuilt first if the files changed."""
        now = time.monotonic()
        if now - self._checked >= self.check_every_s:
            self._checked = now
            stamp = files_stamp(self._paths)
            if stamp is not None and stamp != self._stamp:
                self._stamp = stamp
                self._reload()
        return self._channel

    def _reload(self) -> None:
        try:
            check_tls_files(self._ca, self._cert, self._key)
            fresh = self._build()
        except ValueError as exc:
            log.error(
                "router TLS files unusable, keeping the previous ones", extra={"why": str(exc)}
            )
            return
        old, self._channel = self._channel, fresh
        self._retired.add(old)
        task = asyncio.get_running_loop().create_task(old.close(grace=self.retire_grace_s))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        task.add_done_callback(lambda _: self._retired.discard(old))
        log.info("router TLS files reloaded", extra={"router": self._address})

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _Rebinding(self, "unary_unary", args, kwargs)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _Rebinding(self, "unary_stream", args, kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _Rebinding(self, "stream_unary", args, kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _Rebinding(self, "stream_stream", args, kwargs)

    async def channel_ready(self) -> None:
        await self.current().channel_ready()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.current().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self.current().wait_for_state_change(last_observed_state)

    async def close(self, grace: float | None = None) -> None:
        """The current channel and any still retiring, each with ``grace``."""
        await asyncio.gather(*(ch.close(grace) for ch in [*self._retired, self._channel]))

    async def __aenter__(self) -> ReloadingChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def open_router_channel(
    address: str,
    options: Sequence[tuple[str, Any]],
    *,
    token_file: str | None = None,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> grpc.aio.Channel:
    """A channel to the router; ValueError (one line) for unusable files. With TLS,
    a :class:`ReloadingChannel`: the files are re-read when they change."""
    if (cert is None) != (key is None):
        raise ValueError("--router-tls-cert and --router-tls-key go together")
    interceptors: list[Any] | None = None
    if token_file:
        token = TokenFile(token_file)
        interceptors = [_UnaryToken(token), _StreamToken(token)]
        if not (ca or cert):
            # Said once at start: whoever reads the pod network can replay the token
            # (a mesh or CNI that encrypts pod traffic makes this harmless).
            log.warning(
                "router token sent without TLS; set --router-ca (router --tls-cert) "
                "unless the network between them is encrypted",
                extra={"router": address},
            )
    if ca or cert:
        return ReloadingChannel(address, options, interceptors, ca, cert, key)
    return grpc.aio.insecure_channel(address, options=list(options), interceptors=interceptors)


#: The most of a gRPC error's text a log line carries.
MAX_DETAIL_CHARS = 300


def rpc_detail(exc: BaseException) -> str:
    """A failed call's reason for the log: gRPC's details, bounded.

    Why: the status code alone (``UNAVAILABLE``) says nothing of a TLS handshake
    that failed (``CERTIFICATE_VERIFY_FAILED``, ``Hostname Verification Check
    failed``) or of the scope a token lacks; the details do. They hold gRPC's
    and the router's own text, never request metadata (the token).
    """
    if isinstance(exc, grpc.aio.AioRpcError):
        return (exc.details() or "")[:MAX_DETAIL_CHARS]
    return str(exc)[:MAX_DETAIL_CHARS]
