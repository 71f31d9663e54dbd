"""The rules a RoutingPreferences message must satisfy, for the router and the sidecar alike.

The router applies them to every RankProviders call; the sidecar applies them
to every request before it looks for a ranking, so a request is refused the
same way (same message, same limits from ``router_common.limits``) whether its
ranking would come from the router, a cache or the fallback catalog. Lists are
measured before anything iterates over them.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterable

from router_common.json_text import as_json
from router_common.limits import MAX_NAME_LEN, MAX_PROVIDER_LIST
from router_common.pb import router_pb2
from router_common.wire_enums import PERCENTILE_FROM_WIRE, SORT_FROM_WIRE


class PreferencesError(ValueError):
    """A routing preference that cannot be honoured; ``field`` is its path in the proto."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


_LISTS = ("order", "only", "ignore")
_NUMBERS = (
    ("preferences.max_price.input_per_million", "max_price", "input_per_million"),
    ("preferences.max_price.output_per_million", "max_price", "output_per_million"),
    ("preferences.preferred_max_ttft_ms", None, "preferred_max_ttft_ms"),
    ("preferences.preferred_min_tps", None, "preferred_min_tps"),
)


def validate_preferences(prefs: router_pb2.RoutingPreferences) -> None:
    """Raise PreferencesError naming the first bad field; nearly free for default preferences."""
    if prefs.sort not in SORT_FROM_WIRE:
        raise PreferencesError("preferences.sort", f"unknown value {prefs.sort}")
    if prefs.percentile not in PERCENTILE_FROM_WIRE:
        raise PreferencesError("preferences.percentile", f"unknown value {prefs.percentile}")
    for name in _LISTS:
        names = getattr(prefs, name)
        if not names:
            continue
        if len(names) > MAX_PROVIDER_LIST:
            raise PreferencesError(
                f"preferences.{name}", f"at most {MAX_PROVIDER_LIST} providers, got {len(names)}"
            )
        for provider in names:
            if not provider or len(provider) > MAX_NAME_LEN:
                raise PreferencesError(
                    f"preferences.{name}",
                    f"provider names must be 1..{MAX_NAME_LEN} characters, got {as_json(provider)}",
                )
    order, only, ignore = prefs.order, set(prefs.only), set(prefs.ignore)
    if order and len(set(order)) != len(order):
        raise PreferencesError(
            "preferences.order", f"lists provider {as_json(_first_repeat(order))} more than once"
        )
    if only and ignore:
        both = only & ignore
        if both:
            raise PreferencesError(
                "preferences.ignore", f"providers in both only and ignore: {as_json(sorted(both))}"
            )
    if order and ignore:
        bad = [p for p in order if p in ignore]
        if bad:
            raise PreferencesError("preferences.order", f"providers also in ignore: {as_json(bad)}")
    if order and only:
        bad = [p for p in order if p not in only]
        if bad:
            raise PreferencesError("preferences.order", f"providers outside only: {as_json(bad)}")
    for path, parent, name in _NUMBERS:
        msg = getattr(prefs, parent) if parent else prefs
        if parent and not prefs.HasField(parent):
            continue
        if msg.HasField(name):
            value = getattr(msg, name)
            if not math.isfinite(value) or value < 0:
                raise PreferencesError(path, f"must be a finite number >= 0, got {as_json(value)}")


def check_known_providers(prefs: router_pb2.RoutingPreferences, providers: Container[str]) -> None:
    """PreferencesError naming the first provider in order/only/ignore not in the catalog.

    A name the catalog has never heard of is a typo or a stale config, and
    silently ignoring it (or filtering everything out with it) hides that. A
    provider that exists but does not serve the requested model is fine. The
    router checks against its catalog, the sidecar against its fallback catalog
    when it ranks from it.
    """
    for name in _LISTS:
        for provider in getattr(prefs, name):
            if provider not in providers:
                raise PreferencesError(
                    f"preferences.{name}", f"provider {as_json(provider)} is not in the catalog"
                )


def _first_repeat(names: Iterable[str]) -> str:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return ""
