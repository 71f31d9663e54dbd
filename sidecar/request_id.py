"""The request id every chat answer carries (``x-request-id``), for correlating logs.

Why: a platform team follows one request from the app's log through the sidecar's
access line, the way Envoy and nginx do with ``x-request-id``. An id the app sends is
kept when it is a plausible id (1..128 visible ASCII characters); otherwise, or when
there is none, the sidecar makes one. Made ids are a per-process random prefix and a
counter: unique across pods and restarts without a random draw per request (they
are identifiers, not secrets). The id is not sent to providers: it would tell a
third party about the app's internals for no use the sidecar has.
"""

from __future__ import annotations

import itertools
import os
import re

from aiohttp import web

#: Where the request's id is kept for the handler and the access line.
REQUEST_ID: web.RequestKey[str] = web.RequestKey("router_request_id", str)
#: The header read from the app and set on every answer.
HEADER = "x-request-id"
MAX_LENGTH = 128

_PLAUSIBLE = re.compile(rf"[\x21-\x7e]{{1,{MAX_LENGTH}}}")
_PREFIX = os.urandom(8).hex()
_COUNTER = itertools.count(1)


def request_id(given: str | None) -> str:
    """``given`` when it is a plausible id, else a new one."""
    if given is not None and _PLAUSIBLE.fullmatch(given):
        return given
    return f"{_PREFIX}-{next(_COUNTER):x}"
