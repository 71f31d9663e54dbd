"""The sidecar's gRPC channel to the router: TLS/mTLS and a bearer token.

The token is read from a file (``--router-token-file``, e.g. a Kubernetes
Secret volume) and re-read when the file changes, checked at most once a
second, so rotating the Secret needs no restart. It is added to every call's
metadata by a client interceptor and never logged. TLS uses ``--router-ca``
to verify the router and, for mTLS, ``--router-tls-cert``/``--router-tls-key``
as the sidecar's identity (read at start; restart to rotate them). A token
without TLS is a warning at start: it crosses the network in clear text.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger("sidecar.router_channel")


class TokenFile:
    """A token file's content, re-read when its (mtime, inode, size) changes."""

    def __init__(self, path: str, check_every_s: float = 1.0) -> None:
        self.path = Path(path)
        self.check_every_s = check_every_s
        self._stamp: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self.token = ""
        self._reload()
        if not self.token:
            raise ValueError(
                f"--router-token-file {path}: empty, unreadable or not printable ASCII"
            )

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
            if stamp != self._stamp:
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


class _EncryptedKey(Exception):
    """Raised from the passphrase callback: the key file is encrypted."""


def _no_passphrase() -> bytes:
    """Without a callback OpenSSL would ask on the terminal (a hang) or print a prompt."""
    raise _EncryptedKey


def _why(exc: OSError) -> str:
    return str(getattr(exc, "reason", None) or exc.strerror or exc)


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
        try:
            context.load_verify_locations(ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"--router-ca {ca}: not a usable PEM CA certificate ({_why(exc)})"
            ) from None
    if cert and key:
        try:
            context.load_cert_chain(cert, key, password=_no_passphrase)
        except _EncryptedKey:
            raise ValueError(
                f"--router-tls-key {key}: the private key is encrypted and the sidecar takes "
                "no passphrase; give it the decrypted key (openssl pkey -in KEY -out KEY.plain)"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"--router-tls-cert {cert} / --router-tls-key {key}: not a usable PEM "
                f"certificate and matching key ({_why(exc)})"
            ) from None


def open_router_channel(
    address: str,
    options: Sequence[tuple[str, Any]],
    *,
    token_file: str | None = None,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> grpc.aio.Channel:
    """A channel to the router; ValueError (one line) for unusable files."""
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
        check_tls_files(ca, cert, key)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(ca, "--router-ca"),
            private_key=_read(key, "--router-tls-key"),
            certificate_chain=_read(cert, "--router-tls-cert"),
        )
        return grpc.aio.secure_channel(
            address, credentials, options=list(options), interceptors=interceptors
        )
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
