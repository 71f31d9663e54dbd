"""Prometheus counters per caller: what each caller reported, and what was refused.

Caller names come from the tokens file, client certificates, or (with
authentication off) peer hosts; the ledger keeps at most
``limits.MAX_TRACKED_CALLERS`` of them, so cardinality stays bounded.

==============================================  =======  ====================
metric                                          type     labels
==============================================  =======  ====================
router_caller_outcomes_accepted_total           counter  caller
router_caller_outcomes_rate_limited_total       counter  caller
router_caller_duplicate_batches_total           counter  caller
router_http_refused_total                       counter  code
==============================================  =======  ====================
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from router_service.callers import CallerLedger


class CallerCollector(Collector):
    def __init__(self, ledger: CallerLedger, http_refusals: Counter[str]) -> None:
        self.ledger = ledger
        self.http_refusals = http_refusals

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, counter, help_text in (
            ("router_caller_outcomes_accepted", self.ledger.accepted, "Outcomes accepted"),
            (
                "router_caller_outcomes_rate_limited",
                self.ledger.rate_limited,
                "Outcomes refused with RESOURCE_EXHAUSTED by the caller's rate limit",
            ),
            (
                "router_caller_duplicate_batches",
                self.ledger.duplicates,
                "Batches acknowledged as already applied (not applied again)",
            ),
        ):
            family = CounterMetricFamily(name, f"{help_text}, by caller.", labels=["caller"])
            for caller, value in sorted(counter.items()):
                family.add_metric([caller], value)
            yield family
        refused = CounterMetricFamily(
            "router_http_refused", "HTTP requests refused by authentication.", labels=["code"]
        )
        for code, value in sorted(self.http_refusals.items()):
            refused.add_metric([code], value)
        yield refused
