"""The HTTP side (dashboard, metrics API, ``/metrics``) takes the same ``read`` callers.

When a tokens file is configured every route but ``/healthz`` and ``/readyz``
(probes) needs a caller with the ``read`` scope: ``Authorization: Bearer
<token>`` (Prometheus' ``authorization`` config, curl), or HTTP Basic with the
token as password (any user name) so a browser can open the dashboard -- the
browser prompts once and resends it on the dashboard's own fetches. With TLS
and a client CA, a verified client certificate is also accepted.
"""

from __future__ import annotations

import base64
from collections import Counter

from aiohttp import web

from router_service.auth import (
    Authenticator,
    Caller,
    Denied,
    certificate_names,
    one_authorization,
)

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def _basic_password(header: str) -> str | None:
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII (a 500 before)
        return None
    return decoded.partition(":")[2] or None


def _peer_certificate_names(request: web.Request) -> list[str]:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport else None
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        return []
    names: dict[str, list[bytes]] = {"x509_common_name": [], "x509_subject_alternative_name": []}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names["x509_common_name"].append(value.encode())
    for _kind, value in cert.get("subjectAltName", ()):
        names["x509_subject_alternative_name"].append(value.encode())
    return certificate_names(names)


def http_auth_middleware(authenticator: Authenticator, refusals: Counter[str]):
    """aiohttp middleware enforcing the ``read`` scope; refusals counted by status."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        if not authenticator.enabled or request.path in OPEN_PATHS:
            return await handler(request)
        try:
            header = one_authorization(request.headers.getall("Authorization", []))
            if header and header.strip().lower().startswith("basic "):
                password = _basic_password(header)
                header = f"Bearer {password}" if password else "Bearer -"
            peer = request.remote or "unknown"
            caller: Caller = authenticator.identify(header, _peer_certificate_names(request), peer)
            authenticator.require(caller, "read", request.path)
        except Denied as exc:
            status = 401 if exc.unauthenticated else 403
            refusals[str(status)] += 1
            headers = {"WWW-Authenticate": 'Basic realm="llm-router", charset="UTF-8"'}
            body = {
                "error": {
                    "message": str(exc),
                    "type": "unauthenticated" if status == 401 else "permission_denied",
                }
            }
            return web.json_response(
                body, status=status, headers=headers if status == 401 else None
            )
        return await handler(request)

    return middleware
