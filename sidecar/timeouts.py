"""The first-token timeout of one attempt: who sets it, and what caps it.

Why: a fixed 30 s first-token timeout makes every request that reaches a hung
provider wait 30 s before its fallback. The router knows what each endpoint
normally does and suggests ``RankedEndpoint.first_token_timeout_ms`` (a
multiple of its recent p99 TTFT, with a floor); the configured
``first_byte_timeout_s`` stays the ceiling, so an operator's bound is never
exceeded, and without a suggestion (no data yet) it applies alone.

Per provider (issue 11), in this order:

1. The operator's per-provider default (``--provider-first-token-timeouts
   groq=2000,...``, milliseconds) replaces ``first_byte_timeout_s`` as that
   provider's ceiling (longer or shorter: a reasoning-heavy provider may need
   more than the global bound).
2. A request's ``providerOptions.gateway.providerTimeouts`` entry is what the
   app asked for, so it wins over the router's suggestion (the app may know
   its prompt is long), capped by the provider's ceiling: an app never makes
   the sidecar wait longer than its operator allows.
3. Otherwise the router's suggestion when shorter than the ceiling (as before).

A timeout the request chose and that is shorter than what the sidecar would
have waited on its own is the app's choice, not the endpoint's failure: such
an abandoned attempt is recorded as a timeout in ``routing.attempts`` but not
reported to the router nor put in local cooldown, so one app asking for
10 ms cannot eject a provider for everyone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import NamedTuple

from router_common.limits import MAX_FIRST_TOKEN_TIMEOUT_MS, MAX_NAME_LEN, MIN_PROVIDER_TIMEOUT_MS
from sidecar.config import SidecarSettings
from sidecar.preferences import ParsedRequest
from sidecar.ranking_client import Route, speed_ordered


class AttemptTimeout(NamedTuple):
    """Seconds this attempt may wait for its first token, and whether the request chose it."""

    seconds: float
    #: The request's ``providerTimeouts`` entry set it, shorter than the sidecar's own.
    requested: bool = False


def first_token_timeout(
    settings: SidecarSettings,
    route: Route,
    requested: Mapping[str, float] | None = None,
    per_provider: Mapping[str, float] | None = None,
) -> AttemptTimeout:
    """The first-token wait of a streaming attempt on ``route`` (see the module docstring)."""
    ceiling = settings.first_byte_timeout_s
    if per_provider:
        ceiling = per_provider.get(route.provider, ceiling)
    own = ceiling
    suggested = route.first_token_timeout_s
    if suggested is not None and settings.adaptive_first_token_timeout:
        own = min(ceiling, suggested)
    if requested:
        asked = requested.get(route.provider)
        if asked is not None:
            seconds = min(asked, ceiling)
            return AttemptTimeout(seconds, seconds < own)
    return AttemptTimeout(own)


def response_timeout(
    settings: SidecarSettings,
    route: Route,
    requested: Mapping[str, float] | None = None,
    per_provider: Mapping[str, float] | None = None,
) -> AttemptTimeout | None:
    """A non-streaming attempt's wait for the provider to start answering (its headers).

    Only the per-provider timeouts apply here (capped by ``nonstream_timeout_s``,
    which bounds the whole answer): a non-streaming answer has no first token
    before its end, and the router's suggestion measures streams. None: no
    per-provider timeout for this provider.
    """
    ceiling = settings.nonstream_timeout_s
    configured = per_provider.get(route.provider) if per_provider else None
    asked = requested.get(route.provider) if requested else None
    if asked is not None:
        own = min(ceiling, configured) if configured is not None else ceiling
        seconds = min(asked, own)
        return AttemptTimeout(seconds, seconds < own)
    if configured is not None:
        return AttemptTimeout(min(configured, ceiling))
    return None


def parse_provider_timeouts(text: str) -> dict[str, float]:
    """``NAME=MS[,NAME=MS...]`` (the sidecar flag) → seconds per provider; ValueError if bad."""
    out: dict[str, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name or len(name) > MAX_NAME_LEN:
            raise ValueError(f"expected NAME=MILLISECONDS, got {item[:60]!r}")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"{name}: {value.strip()[:40]!r} is not a number") from None
        if not (MIN_PROVIDER_TIMEOUT_MS <= ms <= MAX_FIRST_TOKEN_TIMEOUT_MS):
            raise ValueError(
                f"{name}: {ms:g} ms is outside {MIN_PROVIDER_TIMEOUT_MS:g}.."
                f"{MAX_FIRST_TOKEN_TIMEOUT_MS:g}"
            )
        if name in out:
            raise ValueError(f"{name} is given twice")
        out[name] = ms / 1000.0
    return out


def slow_start_after(settings: SidecarSettings, req: ParsedRequest, route: Route) -> float | None:
    """Seconds after which a streaming attempt still without a first token marks its
    endpoint slow in this sidecar (``Cooldowns.slow``); None: not watched.

    ``slow_start_multiple`` times the router's ``hedge_after_ms`` for the endpoint
    (its recent p95 TTFT, or its recent estimate when higher), at least
    ``hedge_min_delay_s``. Only under ``sort: ttft`` and load balancing, and
    without ``order``: there TTFT is what the order is for; under ``sort:
    cost``/``tps`` or an explicit order a slow start is no reason to reorder.
    An endpoint without its own suggestion (too little data at the router: a
    provider rarely used, or only explored) is watched against the largest
    suggestion of its ranking (``Route.peer_hedge_after_s``): otherwise such an
    endpoint, if it hangs, keeps its place and every request reaching it waits
    the full ``first_byte_timeout_s``, since the router hears of the first
    timeout only that much later. The mark only moves it back here; no attempt is cut.
    Without any suggestion in the ranking nothing is known to compare with.

    False alarms: a healthy attempt passes twice its endpoint's p95 with a
    chance that is nil for a lognormal TTFT with sigma 0.2 and about 1% with
    sigma 1 (a very heavy tail); each one moves that endpoint back in this
    sidecar for ``slow_start_cooldown_s``, which costs the difference to the
    next endpoint for those seconds, never an error. Raise the multiple for
    providers with such tails.
    """
    multiple = settings.slow_start_multiple
    p95 = route.hedge_after_s if route.hedge_after_s is not None else route.peer_hedge_after_s
    if p95 is None or not multiple > 0:
        return None
    if not speed_ordered(req.preferences):
        return None
    return max(p95 * multiple, settings.hedge_min_delay_s)


class FirstTokenTimeout(asyncio.Timeout):  # type: ignore[misc]  # typeshed marks it final
    """``asyncio.timeout_at(limit)`` that also calls ``on_slow`` at ``slow_at`` when that
    comes first: the first-token wait and the slow-start watch on one timer.

    Why: a streamed attempt armed two timers (the wait and the watch), each a
    ``TimerHandle`` made, pushed on the loop's heap and cancelled per request:
    ~2-3 % of the sidecar's busy loop at 32 unpaced streams (issue 13). The watch
    comes first, so the one timer is set for it; when it fires it moves itself on
    to the limit, then notes the slow start (nothing is cut). At the limit it is
    asyncio's own timeout: the task is cancelled and the block raises TimeoutError.
    """

    def __init__(
        self, limit: float, slow_at: float | None, on_slow: Callable[[], object] | None
    ) -> None:
        early = slow_at is not None and on_slow is not None and slow_at < limit
        super().__init__(slow_at if early else limit)
        self._limit = limit
        self._on_slow = on_slow if early else None

    def _on_timeout(self) -> None:
        on_slow = self._on_slow
        if on_slow is None:
            super()._on_timeout()  # type: ignore[misc]
            return
        self._on_slow = None
        self._timeout_handler = None  # the handle that fired: nothing to cancel
        self.reschedule(self._limit)
        on_slow()
