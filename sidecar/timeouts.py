"""The first-token timeout of one attempt: the configured one, or the router's shorter suggestion.

Why: a fixed 30 s first-token timeout makes every request that reaches a hung
provider wait 30 s before its fallback. The router knows what each endpoint
normally does and suggests ``RankedEndpoint.first_token_timeout_ms`` (a
multiple of its recent p99 TTFT, with a floor); the configured
``first_byte_timeout_s`` stays the ceiling, so an operator's bound is never
exceeded, and without a suggestion (no data yet) it applies alone.
"""

from __future__ import annotations

from sidecar.config import SidecarSettings
from sidecar.preferences import ParsedRequest
from sidecar.ranking_client import Route, speed_ordered


def first_token_timeout(settings: SidecarSettings, route: Route) -> float:
    """Seconds this attempt may wait for its first token."""
    ceiling = settings.first_byte_timeout_s
    suggested = route.first_token_timeout_s
    if suggested is None or not settings.adaptive_first_token_timeout:
        return ceiling
    return min(ceiling, suggested)


def slow_start_after(settings: SidecarSettings, req: ParsedRequest, route: Route) -> float | None:
    """Seconds after which a streaming attempt still without a first token marks its
    endpoint slow in this sidecar (``Cooldowns.slow``); None: not watched.

    ``slow_start_multiple`` times the router's ``hedge_after_ms`` for the endpoint
    (its recent p95 TTFT, or its recent estimate when higher), at least
    ``hedge_min_delay_s``. Only under ``sort: ttft`` and load balancing, and
    without ``order``: there TTFT is what the order is for; under ``sort:
    cost``/``tps`` or an explicit order a slow start is no reason to reorder.
    Without a suggestion (no data on the endpoint) nothing is known to compare with.

    False alarms: a healthy attempt passes twice its endpoint's p95 with a
    chance that is nil for a lognormal TTFT with sigma 0.2 and about 1% with
    sigma 1 (a very heavy tail); each one moves that endpoint back in this
    sidecar for ``slow_start_cooldown_s``, which costs the difference to the
    next endpoint for those seconds, never an error. Raise the multiple for
    providers with such tails.
    """
    multiple = settings.slow_start_multiple
    p95 = route.hedge_after_s
    if p95 is None or not multiple > 0:
        return None
    if not speed_ordered(req.preferences):
        return None
    return max(p95 * multiple, settings.hedge_min_delay_s)
