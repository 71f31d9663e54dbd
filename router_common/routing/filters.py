"""Hard filters: the preferences no fallback, panic or stale cache may ever undo.

``only``, ``ignore``, ``zero_data_retention`` and ``max_price`` are
guarantees, not hints: a ZDR request must never reach a host that keeps data,
whichever process ranked it (the router with live metrics, or the sidecar from
its fallback catalog while the router is unreachable) and however old the
ranking is. Checked in a fixed order, first failure wins, so the reason an
endpoint is excluded is the same everywhere.
"""

from __future__ import annotations

from typing import NamedTuple

from router_common.pb import router_pb2
from router_common.routing import reasons as r
from router_common.routing.reasons import Reason


class HardFilters(NamedTuple):
    """The hard filters of one request; prices in USD per million tokens.

    A NamedTuple: the router builds one per filtered ranking, on its hot path.
    """

    only: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    zero_data_retention: bool = False
    max_input_price: float | None = None
    max_output_price: float | None = None

    @property
    def active(self) -> bool:
        """False when no filter is set, so callers can skip checking every endpoint."""
        return (
            self.only is not None
            or bool(self.ignore)
            or self.zero_data_retention
            or self.max_input_price is not None
            or self.max_output_price is not None
        )

    @classmethod
    def from_preferences(cls, prefs: router_pb2.RoutingPreferences) -> HardFilters:
        """The filters a wire RoutingPreferences asks for (an empty ``only`` is no filter)."""
        price = prefs.max_price
        return cls(
            only=frozenset(prefs.only) if prefs.only else None,
            ignore=frozenset(prefs.ignore),
            zero_data_retention=prefs.zero_data_retention,
            max_input_price=(
                price.input_per_million if price.HasField("input_per_million") else None
            ),
            max_output_price=(
                price.output_per_million if price.HasField("output_per_million") else None
            ),
        )


def hard_filter(
    filters: HardFilters, provider: str, zdr: bool, input_price: float, output_price: float
) -> Reason | None:
    """The first filter an endpoint of ``provider`` fails, or None when it may be tried."""
    only = filters.only
    if only is not None and provider not in only:
        return Reason(r.NOT_IN_ONLY, f"provider {provider} is not in `only`")
    if provider in filters.ignore:
        return Reason(r.IGNORED, f"provider {provider} is in `ignore`")
    if filters.zero_data_retention and not zdr:
        return Reason(
            r.NOT_ZDR,
            f"provider {provider} does not offer zero data retention",
            {"zero_data_retention": 0.0},
        )
    max_in = filters.max_input_price
    if max_in is not None and input_price > max_in:
        return _price_above(r.INPUT_PRICE_ABOVE_MAX, "input", input_price, max_in)
    max_out = filters.max_output_price
    if max_out is not None and output_price > max_out:
        return _price_above(r.OUTPUT_PRICE_ABOVE_MAX, "output", output_price, max_out)
    return None


def _price_above(code: str, side: str, price: float, cap: float) -> Reason:
    return Reason(
        code,
        f"{side} price ${price:g}/Mtok above max ${cap:g}/Mtok",
        {f"{side}_price_per_mtok": price, f"max_{side}_price": float(cap)},
    )
