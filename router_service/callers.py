"""Per-caller state that bounds one caller's influence: rate limit and batch-id memory.

Every accepted outcome is attributed to a caller (see :mod:`router_service.auth`).
A token bucket per caller caps how many outcomes it may report per second, so
one compromised sidecar cannot drown the honest fleet's measurements; the
batch-id memory makes a resent batch a no-op. Both are bounded: callers,
senders per caller and ids per sender are capped (least recently seen
forgotten first), whatever callers send. With ``--redis`` the batch ids peer
replicas applied are remembered here too (``learn``), inside the same bounds.
Pure and clock-injected.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from router_common.domain import Clock
from router_common.limits import (
    BATCH_IDS_REMEMBERED,
    MAX_OUTCOMES_PER_BATCH,
    MAX_SENDERS_PER_CALLER,
    MAX_TRACKED_CALLERS,
)


@dataclass(frozen=True, slots=True)
class CallerLimitsConfig:
    """Per-caller outcome budget.

    ============================  ========  =============================================
    field                         default   why
    ============================  ========  =============================================
    outcomes_per_second           20000     sustained outcomes one caller may report; a
                                            sidecar reports one per upstream attempt, so
                                            this is a fleet sharing one token at ~20k
                                            LLM calls/s. 0 disables the limit.
    outcome_burst                 40000     bucket size: a sidecar flushing a backlog
                                            after a router restart is not refused. At
                                            least one full batch (1000).
    ============================  ========  =============================================
    """

    outcomes_per_second: float = 20_000.0
    outcome_burst: float = 40_000.0

    def __post_init__(self) -> None:
        if self.outcomes_per_second < 0:
            raise ValueError("outcomes_per_second must be >= 0")
        if self.outcome_burst < MAX_OUTCOMES_PER_BATCH:
            raise ValueError(f"outcome_burst must be >= {MAX_OUTCOMES_PER_BATCH} (one batch)")


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class _SenderIds:
    """The last BATCH_IDS_REMEMBERED sequence numbers of one sender."""

    __slots__ = ("floor", "order", "seen")

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.order: deque[int] = deque()
        #: The highest sequence forgotten; anything at or below it counts as
        #: applied (senders number upwards), so forgetting never re-applies.
        self.floor = 0

    def is_duplicate(self, sequence: int) -> bool:
        return sequence in self.seen or sequence <= self.floor

    def remember(self, sequence: int) -> None:
        if sequence in self.seen:
            return
        self.seen.add(sequence)
        self.order.append(sequence)
        if len(self.order) > BATCH_IDS_REMEMBERED:
            forgotten = self.order.popleft()
            self.seen.discard(forgotten)
            self.floor = max(self.floor, forgotten)


@dataclass(slots=True)
class _CallerState:
    bucket: _Bucket
    senders: OrderedDict[str, _SenderIds] = field(default_factory=OrderedDict)


class CallerLedger:
    """Rate-limit buckets and recent batch ids, per caller, with per-caller counters."""

    def __init__(self, config: CallerLimitsConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self._callers: OrderedDict[str, _CallerState] = OrderedDict()
        #: For /metrics, by caller name: outcomes accepted, refused by the rate limit,
        #: and duplicate batches. Names come from the tokens file or certificates, or
        #: are peer hosts (bounded by MAX_TRACKED_CALLERS rows each).
        self.accepted: Counter[str] = Counter()
        self.rate_limited: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()

    def _state(self, caller: str) -> _CallerState:
        state = self._callers.get(caller)
        if state is None:
            state = _CallerState(_Bucket(self.config.outcome_burst, self.clock()))
            self._callers[caller] = state
            if len(self._callers) > MAX_TRACKED_CALLERS:
                gone, _ = self._callers.popitem(last=False)
                for counter in (self.accepted, self.rate_limited, self.duplicates):
                    counter.pop(gone, None)
        else:
            self._callers.move_to_end(caller)
        return state

    def take(self, caller: str, outcomes: int) -> bool:
        """Spend ``outcomes`` from the caller's bucket; False (nothing spent) if short."""
        rate = self.config.outcomes_per_second
        if rate <= 0:
            return True
        bucket = self._state(caller).bucket
        now = self.clock()
        elapsed = max(0.0, now - bucket.stamp)
        bucket.tokens = min(self.config.outcome_burst, bucket.tokens + elapsed * rate)
        bucket.stamp = now
        if outcomes > bucket.tokens:
            self.rate_limited[caller] += outcomes
            return False
        bucket.tokens -= outcomes
        return True

    def count_accepted(self, caller: str, outcomes: int) -> None:
        """Add to the caller's accepted count, if the caller is still tracked.

        Called once its batch is applied, which may be long after ``take``: a
        caller forgotten meanwhile (``MAX_TRACKED_CALLERS`` others arrived) had
        its rows dropped, and counting it now would recreate one no later
        eviction removes, so the series would grow with every such caller.
        """
        if caller in self._callers:
            self.accepted[caller] += outcomes

    def retry_after_s(self, caller: str, outcomes: int) -> float:
        """Seconds until ``outcomes`` fit in the caller's bucket."""
        rate = self.config.outcomes_per_second
        state = self._callers.get(caller)
        if rate <= 0 or state is None:
            return 0.0
        return max(0.0, (outcomes - state.bucket.tokens) / rate)

    def _sender(self, caller: str, sender: str) -> _SenderIds:
        senders = self._state(caller).senders
        ids = senders.get(sender)
        if ids is None:
            ids = senders[sender] = _SenderIds()
            if len(senders) > MAX_SENDERS_PER_CALLER:
                senders.popitem(last=False)
        else:
            senders.move_to_end(sender)
        return ids

    def is_duplicate(self, caller: str, sender: str, sequence: int) -> bool:
        duplicate = self._sender(caller, sender).is_duplicate(sequence)
        if duplicate:
            self.duplicates[caller] += 1
        return duplicate

    def remember(self, caller: str, sender: str, sequence: int) -> None:
        self._sender(caller, sender).remember(sequence)

    def knows(self, caller: str, sender: str, sequence: int) -> bool:
        """Whether that batch counts as applied, without counting or touching anything."""
        state = self._callers.get(caller)
        ids = state.senders.get(sender) if state is not None else None
        return ids is not None and ids.is_duplicate(sequence)

    def learn(self, ids: Iterable[tuple[str, str, int]]) -> None:
        """Remember (caller, sender, sequence) ids of batches a peer replica applied.

        Stored exactly as this replica's own (``remember``), so the caller,
        sender and id caps bound them too: a peer's ids can push out older
        state here, never grow it. Nothing is counted: the batches were not
        sent here.
        """
        for caller, sender, sequence in ids:
            self._sender(caller, sender).remember(sequence)

    @property
    def tracked(self) -> int:
        return len(self._callers)
