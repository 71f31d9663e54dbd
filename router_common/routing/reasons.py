"""Why an endpoint was excluded, moved down or explored: code, sentence, numbers.

Users of a router want to see *why* a request landed where it did (Vercel's
"routing metadata block"), so every placement decision carries a machine
readable code, a human sentence and the numbers behind it. The codes are
stable strings: they reach clients through the proto and JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# Hard filters (router_common.routing.filters).
NOT_IN_ONLY = "not_in_only"
IGNORED = "ignored"
NOT_ZDR = "not_zdr"
INPUT_PRICE_ABOVE_MAX = "input_price_above_max"
OUTPUT_PRICE_ABOVE_MAX = "output_price_above_max"
# Health and the fallback switch (router ranking).
EJECTED = "ejected"
PROBE_UNAVAILABLE = "probe_unavailable"
FALLBACKS_DISABLED = "fallbacks_disabled"
DEGRADED = "degraded"
PROBING = "probing"
# Soft preferences and data (router ranking).
TTFT_ABOVE_PREFERRED = "ttft_above_preferred"
TPS_BELOW_PREFERRED = "tps_below_preferred"
NO_DATA_FOR_SORT = "no_data_for_sort"
EXPLORATION = "exploration"


@dataclass(frozen=True, slots=True)
class Reason:
    """One decision about one endpoint: ``code`` (above), ``detail`` (a sentence), numbers."""

    code: str
    detail: str
    numbers: Mapping[str, float] = field(default_factory=dict)
