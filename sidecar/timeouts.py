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
from sidecar.ranking_client import Route


def first_token_timeout(settings: SidecarSettings, route: Route) -> float:
    """Seconds this attempt may wait for its first token."""
    ceiling = settings.first_byte_timeout_s
    suggested = route.first_token_timeout_s
    if suggested is None or not settings.adaptive_first_token_timeout:
        return ceiling
    return min(ceiling, suggested)
