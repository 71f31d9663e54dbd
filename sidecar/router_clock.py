"""The router's wall clock, read on this host: when an attempt started, on the clock that judges it.

Why: an outcome's ``started_at`` is an absolute time, and the router both
checks it (at most 60 s ahead of its own clock, at most a day behind) and
buckets the latency sketches by it. A sidecar on a node whose clock is off was
silently useless: 2 minutes ahead, every outcome was rejected (the router
learned nothing); 2 hours behind, every outcome was accepted into buckets two
hours old, outside the 5-minute and 1-hour windows that ranking and the
dashboard read. Nodes are not guaranteed to agree (NTP down, a VM restored
from a snapshot), and neither process can fix the other's clock.

How: every fresh ``RankProviders`` answer carries ``RoutingMetadata.ranked_at``,
the router's clock when it ranked. Read between this host's wall clock before
the call and after it, it gives the offset ``ranked_at - midpoint`` to within
half the round trip (a few ms on a cluster network; the call's timeout, 0.5 s
by default, bounds it). Outcome start times are then this host's wall clock
plus the latest offset, applied when the outcome is queued
(``OutcomeReporter.submit``). Before the first answer there is no offset:
outcomes queued then (a router unreachable at start, requests served from
the fallback catalog) are shifted by the first offset measured
(``on_first_offset``), so they are not lost either (a batch the sender's retry
delivers before any ranking call succeeds keeps this node's times: the
offset is only learnt from a ranking). The offset is exported
(``router_sidecar_router_clock_offset_seconds``) and logged once when it
passes ``WARN_OFFSET_S``, so a skewed node is visible even though nothing is
lost any more.

Durations (TTFT, throughput, attempt time) never come from here: they are
measured on ``time.perf_counter`` (monotonic), so a clock step during a request
cannot make them negative or huge.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: An offset at least this large (seconds) is logged: well above what a round
#: trip can fake, well below the router's 60 s limit.
WARN_OFFSET_S = 1.0


class RouterClock:
    """This host's wall clock plus the offset to the router's, as last measured."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        on_offset: Callable[[float], None] = lambda offset_s: None,
    ) -> None:
        #: This host's wall clock (injected in tests: a skewed node).
        self.wall = wall
        self.offset_s = 0.0
        #: True once an answer gave an offset: until then ``offset_s`` (0) is a guess.
        self.measured = False
        #: Called once, with the first offset measured (the outcome reporter shifts
        #: what it queued before it).
        self.on_first_offset: Callable[[float], None] = lambda offset_s: None
        self._on_offset = on_offset
        self._warned = False

    def now(self) -> float:
        """The router's clock now, Unix seconds, as well as this host can tell."""
        return self.wall() + self.offset_s

    def observe(self, sent: float, ranked_at: float, received: float) -> None:
        """A router answer: ``ranked_at`` (its clock) read between ``sent`` and
        ``received`` (this host's ``wall()``). ``ranked_at`` 0 (a router that does
        not say) or a reading across a clock step (``received < sent``) is ignored."""
        if ranked_at <= 0.0 or received < sent:
            return
        offset = ranked_at - (sent + received) / 2.0
        self.offset_s = offset
        self._on_offset(offset)
        if not self.measured:
            self.measured = True
            self.on_first_offset(offset)
        if abs(offset) >= WARN_OFFSET_S and not self._warned:
            self._warned = True
            log.warning(
                "this host's clock differs from the router's; outcome start times are "
                "sent on the router's clock",
                extra={"offset_s": round(offset, 3)},
            )
        elif abs(offset) < WARN_OFFSET_S / 2 and self._warned:
            self._warned = False
            log.info(
                "this host's clock agrees with the router's again",
                extra={"offset_s": round(offset, 3)},
            )
