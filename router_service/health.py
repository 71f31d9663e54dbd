"""Per-endpoint health: a small state machine driven by outcomes.

States::

    HEALTHY ⇄ DEGRADED ──▶ EJECTED ──(time)──▶ PROBING ──(N probe successes)──▶ HEALTHY
        └──────────────────────▲  ▲──────(probe failure, longer)──┘

* **Ejection** happens on ``consecutive_failures_to_eject`` failures in a row, on a
  failure rate of at least ``failure_rate_to_eject`` over the last
  ``failure_rate_window_s`` seconds once there were ``failure_rate_min_attempts``
  attempts, or at once on a 429 carrying Retry-After (until then, capped by
  ``max_retry_after_s`` so that a hostile header cannot eject an endpoint forever).
* **Ejection time** grows with each ejection of a streak:
  ``min(base * multiplier**n, max) * (1 ± jitter)``. The jitter comes from an
  injected ``random.Random`` so that a fleet of routers does not re-probe an
  endpoint in lock-step, and so that tests are deterministic. A streak ends
  (``n`` back to 0) once the endpoint has stayed out of ejection for
  ``ejection_decay_s`` after recovering.
* **Probing** (half-open) starts lazily, the first time the endpoint is looked at
  after ``ejected_until``. At most ``probe_permits`` requests may be in flight at
  once (the router calls :meth:`HealthTracker.grant_probe` when it routes one);
  a permit whose outcome never arrives frees itself after ``probe_timeout_s``.
  ``probe_successes_to_recover`` successes restore HEALTHY; one failure
  re-ejects, for longer.
* **Degraded** is a soft state (ranking deprioritises, never drops): the median
  TTFT of the recent successful attempts is more than ``degraded_ttft_ratio``
  times the endpoint's own hourly P50 (passed in by the caller) *and* more
  than that ratio times the slowdown its peers (the other endpoints of the
  same model) show against their own baselines, or the failure rate is
  elevated (``degraded_failure_rate``) but below ejection. It clears by itself
  when the condition does, including by the evidence ageing out, so that an
  endpoint that gets little traffic because it is degraded is not stuck there.
  A success whose own TTFT is within the ratio never *newly* degrades by the
  TTFT rule: the median can still be the incident's while the newest answer
  says the provider recovered, and degrading it then kept a recovered provider
  out of the ranking's front for seconds (``_evaluate_degraded``).

  Why 2× and peers: a provider whose TTFT triples is *measured* at less than
  3× its baseline, because the connection and proxy time in every TTFT does
  not triple, so a 3× threshold never fires on a 3× slowdown; the threshold
  has to sit well below the slowdown it must catch. A lower threshold would
  also fire when every provider of a model slows down together (callers
  sending longer prompts, a popular model's launch day), which is not any one
  endpoint's fault and which deprioritising one of them cannot fix, so each
  endpoint's slowdown is divided by its peers' median slowdown first.

What counts: an outcome is a *failure* when ``error_class.counts_against_endpoint``
(timeouts, connection errors, 429, 5xx, 401/403, mid-stream aborts), or when it
is unsuccessful and unclassified; a *success* when ``success`` is true and its
error class is NONE; CLIENT_ERROR (400/422) is the caller's fault and CANCELLED
(a hedge's loser, given up by the caller) is no verdict, so both are neither.

Time: every decision uses the injected clock at the moment an outcome is
*recorded*, not ``Outcome.timestamp``. Sidecar clocks are not ours and batched
reports arrive late; the router's own clock is the only one that makes
``ejected_until`` and the rate window mutually consistent.

The module is pure: no I/O, no wall clock, no global randomness. A lock makes
one tracker safe to share between gRPC worker threads; every operation is O(1)
amortised apart from the (bounded) median over recent TTFTs.
"""

from __future__ import annotations

import math
import random
import statistics
import threading
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields

from router_common.domain import Clock, EndpointKey, ErrorClass
from router_common.json_text import as_json
from router_service.model import HEALTHY, HealthState, HealthView, Outcome

__all__ = ["FIRST_SEEN_REASON", "HealthConfig", "HealthTracker", "Transition"]

#: The reason of a HEALTHY endpoint that has reported outcomes but never changed state.
FIRST_SEEN_REASON = "outcomes seen, none past a failure or slowdown threshold"


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Every health threshold, with its default and why.

    ==============================  ========  ==============================================
    field                           default   meaning
    ==============================  ========  ==============================================
    consecutive_failures_to_eject   5         failures in a row that eject (catches a hard
                                              outage within a handful of requests)
    failure_rate_window_s           30.0      length of the sliding failure-rate window, s
    failure_rate_to_eject           0.5       failure ratio (>=) in the window that ejects
    failure_rate_min_attempts       10        attempts needed in the window before either
                                              failure-rate rule (eject or degrade) applies,
                                              so two unlucky requests cannot eject
    failure_rate_max_samples        1000      memory bound of the window; at higher rates it
                                              covers the most recent attempts only
    degraded_failure_rate           0.2       failure ratio (>=) in the window that degrades;
                                              must not exceed failure_rate_to_eject
    degraded_ttft_ratio             2.0       degraded when recent median TTFT is more than
                                              this multiple of the endpoint's hourly P50
                                              (and of its peers' slowdown); below 3 so a
                                              3x slowdown, measured with fixed overheads
                                              at ~2.7x, is caught (module docstring)
    degraded_min_samples            5         recent TTFT samples needed for the TTFT rule
    degraded_ttft_samples           20        how many recent successful TTFTs are kept
                                              (the "last N" of the median)
    degraded_ttft_max_age_s         30.0      older TTFT samples no longer count, so the
                                              TTFT rule clears without new traffic: a
                                              degraded endpoint gets little traffic, and
                                              after 30 s it is tried again (5 slow answers
                                              degrade it again) rather than shunned for
                                              minutes after it recovered
    degraded_baseline_freeze_s      600.0     while degraded (for at most this long) the
                                              TTFT baseline does not rise with the slow
                                              samples; afterwards slow is the new normal
    base_ejection_s                 10.0      first ejection of a streak, before jitter
    max_ejection_s                  300.0     cap of the growing ejection, before jitter
    ejection_multiplier             2.0       growth per repeated ejection (>= 1)
    ejection_jitter                 0.2       ± fraction applied to every computed ejection;
                                              bounds: [base*(1-j), max*(1+j)]
    max_retry_after_s               600.0     cap on a 429's Retry-After ejection
    probe_permits                   1         concurrent probes allowed in PROBING
    probe_successes_to_recover      2         probe successes that restore HEALTHY
    probe_timeout_s                 30.0      a granted probe that never reports frees its
                                              permit after this
    ejection_decay_s                600.0     after this long out of ejection since the last
                                              recovery, the next ejection starts from base
    transition_log_size             256       recent transitions kept for the dashboard
    ==============================  ========  ==============================================

    Invalid values raise ``ValueError`` naming the field, at construction, so a bad
    config file fails at load rather than at the first incident.
    """

    consecutive_failures_to_eject: int = 5
    failure_rate_window_s: float = 30.0
    failure_rate_to_eject: float = 0.5
    failure_rate_min_attempts: int = 10
    failure_rate_max_samples: int = 1000
    degraded_failure_rate: float = 0.2
    degraded_ttft_ratio: float = 2.0
    degraded_min_samples: int = 5
    degraded_ttft_samples: int = 20
    degraded_ttft_max_age_s: float = 30.0
    degraded_baseline_freeze_s: float = 600.0
    base_ejection_s: float = 10.0
    max_ejection_s: float = 300.0
    ejection_multiplier: float = 2.0
    ejection_jitter: float = 0.2
    max_retry_after_s: float = 600.0
    probe_permits: int = 1
    probe_successes_to_recover: int = 2
    probe_timeout_s: float = 30.0
    ejection_decay_s: float = 600.0
    transition_log_size: int = 256

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"HealthConfig.{f.name} must be an int, got {as_json(value)}")
            elif (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise ValueError(
                    f"HealthConfig.{f.name} must be a finite number, got {as_json(value)}"
                )

        def need(name: str, ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"HealthConfig.{name} {what}, got {as_json(getattr(self, name))}")

        for name in (
            "consecutive_failures_to_eject",
            "failure_rate_min_attempts",
            "failure_rate_max_samples",
            "degraded_min_samples",
            "degraded_ttft_samples",
            "probe_permits",
            "probe_successes_to_recover",
            "transition_log_size",
        ):
            need(name, getattr(self, name) >= 1, "must be >= 1")
        for name in (
            "failure_rate_window_s",
            "degraded_ttft_max_age_s",
            "degraded_baseline_freeze_s",
            "base_ejection_s",
            "max_retry_after_s",
            "probe_timeout_s",
        ):
            need(name, getattr(self, name) > 0, "must be > 0")
        need("ejection_decay_s", self.ejection_decay_s >= 0, "must be >= 0")
        need("failure_rate_to_eject", 0 < self.failure_rate_to_eject <= 1, "must be in (0, 1]")
        need("degraded_failure_rate", 0 < self.degraded_failure_rate <= 1, "must be in (0, 1]")
        need(
            "degraded_failure_rate",
            self.degraded_failure_rate <= self.failure_rate_to_eject,
            f"must be <= failure_rate_to_eject ({self.failure_rate_to_eject})",
        )
        need("degraded_ttft_ratio", self.degraded_ttft_ratio > 1, "must be > 1")
        need(
            "degraded_min_samples",
            self.degraded_min_samples <= self.degraded_ttft_samples,
            f"must be <= degraded_ttft_samples ({self.degraded_ttft_samples})",
        )
        need(
            "failure_rate_min_attempts",
            self.failure_rate_min_attempts <= self.failure_rate_max_samples,
            f"must be <= failure_rate_max_samples ({self.failure_rate_max_samples})",
        )
        need(
            "max_ejection_s",
            self.max_ejection_s >= self.base_ejection_s,
            f"must be >= base_ejection_s ({self.base_ejection_s})",
        )
        need("ejection_multiplier", self.ejection_multiplier >= 1, "must be >= 1")
        need("ejection_jitter", 0 <= self.ejection_jitter < 1, "must be in [0, 1)")


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change, for the dashboard, logs and metrics."""

    key: EndpointKey
    from_state: HealthState
    to_state: HealthState
    reason: str
    at: float


@dataclass(slots=True)
class _EndpointHealth:
    """Mutable per-endpoint state; every collection in it is bounded."""

    since: float
    state: HealthState = HealthState.HEALTHY
    reason: str = ""
    ejected_until: float | None = None
    last_failure_at: float | None = None
    consecutive_failures: int = 0
    #: (recorded_at, failed) for attempts in the failure-rate window.
    window: deque[tuple[float, bool]] = field(default_factory=deque)
    #: Failures currently in ``window``, kept in step so reading the rate is O(1).
    window_failures: int = 0
    #: (recorded_at, ttft_ms) of recent successful attempts.
    ttfts: _TtftSamples = field(default_factory=lambda: _TtftSamples())
    baseline_ttft_ms: float | None = None
    #: Recent median TTFT / baseline as last evaluated (None: not enough data);
    #: what this endpoint contributes to its peers' "is everyone slower" check.
    ttft_slowdown: float | None = None
    #: Ejections in the current streak; drives the growing ejection time.
    ejections: int = 0
    #: When the endpoint last recovered from PROBING (for the streak decay).
    recovered_at: float | None = None
    #: Grant times of probes in flight (at most probe_permits).
    probe_grants: deque[float] = field(default_factory=deque)
    probe_successes: int = 0


class _TtftSamples:
    """(recorded_at, ttft_ms) of recent successes, oldest first, with the values also
    kept sorted.

    The degraded rule reads their median after every outcome; re-sorting the
    twenty values each time was a quarter of health's cost per outcome on the
    ingestion path. Keeping a sorted copy costs one ``insort`` per append and
    one bisected delete per drop (both in C), and the median is then O(1).
    Values are finite (the tracker only appends checked TTFTs), so the sorted
    copy and the queue always hold the same values.
    """

    __slots__ = ("_items", "_sorted")

    def __init__(self, items: Iterable[tuple[float, float]] = ()) -> None:
        self._items: deque[tuple[float, float]] = deque(items)
        self._sorted = sorted(v for _, v in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[tuple[float, float]]:
        return iter(self._items)

    def append(self, at: float, value: float, keep: int) -> None:
        """Add a sample, then drop the oldest beyond ``keep``."""
        self._items.append((at, value))
        insort(self._sorted, value)
        if len(self._items) > keep:
            self._drop_oldest()

    def drop_before(self, horizon: float) -> None:
        items = self._items
        while items and items[0][0] < horizon:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, value = self._items.popleft()
        del self._sorted[bisect_left(self._sorted, value)]

    def last_at(self) -> float | None:
        return self._items[-1][0] if self._items else None

    def median(self) -> float:
        """``statistics.median`` of the values (the caller checks there are some)."""
        values = self._sorted
        half = len(values) // 2
        return values[half] if len(values) % 2 else (values[half - 1] + values[half]) / 2

    def clear(self) -> None:
        self._items.clear()
        self._sorted.clear()


def _describe_failure(outcome: Outcome) -> str:
    """'server_error 503', 'timeout': what the reason strings say about a failure."""
    name = "unclassified failure" if outcome.error_class is ErrorClass.NONE else outcome.error_class
    return f"{name} {outcome.http_status}" if outcome.http_status else str(name)


def _fmt_s(seconds: float) -> str:
    """Seconds for humans: '20s', '12.3s'."""
    return f"{seconds:.0f}s" if abs(seconds - round(seconds)) < 0.05 else f"{seconds:.1f}s"


class HealthTracker:
    """Holds the health state of every endpoint it has seen an outcome for.

    Reads (:meth:`view`) are what ranking calls on its hot path; they are O(1)
    apart from lazily applying time-driven transitions (end of ejection, expired
    probe permits, ageing degraded evidence).

    ``on_transition``, if given, is called (under the tracker's lock, after the
    state is fully updated) for each state change, so the server can count
    transitions in Prometheus or log them; it must be quick and must not call
    back into the tracker.
    """

    def __init__(
        self,
        config: HealthConfig,
        clock: Clock,
        rng: random.Random,
        *,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self._cfg = config
        self._clock = clock
        self._rng = rng
        self._on_transition = on_transition
        self._states: dict[EndpointKey, _EndpointHealth] = {}
        #: model → its endpoints with state, for the peer comparison.
        self._by_model: dict[str, set[EndpointKey]] = {}
        self._log: deque[Transition] = deque(maxlen=config.transition_log_size)
        self._lock = threading.RLock()

    @property
    def config(self) -> HealthConfig:
        return self._cfg

    # ------------------------------------------------------------------ writes

    def record(self, outcome: Outcome, baseline_ttft_ms: float | None = None) -> None:
        """Feed one attempt's outcome.

        ``baseline_ttft_ms`` is the endpoint's hourly P50 TTFT from the stats
        store (None if unknown). The last known positive baseline is kept, so a
        caller that cannot supply it on some call does not switch the TTFT rule off.
        """
        with self._lock:
            self._record(outcome, baseline_ttft_ms, self._clock())

    def record_many(
        self, outcomes: Iterable[Outcome], baselines: Mapping[EndpointKey, float | None]
    ) -> None:
        """``record`` each outcome in order, with its endpoint's baseline from ``baselines``.

        One lock and one clock reading for the batch (its outcomes arrived
        together); every outcome still goes through the state machine, so the
        states and transitions are those of one ``record`` per outcome at that
        instant.
        """
        with self._lock:
            now = self._clock()
            cfg = self._cfg
            states, healthy, none = self._states, HealthState.HEALTHY, ErrorClass.NONE
            window_horizon = now - cfg.failure_rate_window_s
            ttft_horizon = now - cfg.degraded_ttft_max_age_s
            max_samples, keep = cfg.failure_rate_max_samples, cfg.degraded_ttft_samples
            min_attempts, degraded_rate = cfg.failure_rate_min_attempts, cfg.degraded_failure_rate
            min_samples, ratio = cfg.degraded_min_samples, cfg.degraded_ttft_ratio
            ok = (now, False)
            inf = math.inf
            baseline_of = baselines.get
            for outcome in outcomes:
                key = outcome.endpoint
                st = states.get(key)
                if (
                    st is None
                    or st.state is not healthy
                    or not outcome.success
                    or outcome.error_class is not none
                ):
                    self._record(outcome, baseline_of(key), now)
                    continue
                # A success on a HEALTHY endpoint, by far the most common outcome:
                # ``_record``'s steps for it, inlined, in the same order.
                baseline = baseline_of(key)
                if baseline is not None and baseline != st.baseline_ttft_ms and 0 < baseline < inf:
                    st.baseline_ttft_ms = baseline  # never frozen while HEALTHY
                window = st.window
                window.append(ok)
                if len(window) > max_samples:
                    st.window_failures -= window.popleft()[1]
                st.consecutive_failures = 0
                ttft, ttfts = outcome.ttft_ms, st.ttfts
                items, ordered = ttfts._items, ttfts._sorted
                if ttft is not None and 0 <= ttft < inf:
                    # _TtftSamples.append, inline
                    items.append((now, ttft))
                    insort(ordered, ttft)
                    if len(items) > keep:
                        del ordered[bisect_left(ordered, items.popleft()[1])]
                # ``_evaluate_degraded`` while the evidence shows nothing wrong; when
                # it might, the method itself runs (its drops are done: no-ops).
                while window[0][0] < window_horizon:
                    st.window_failures -= window.popleft()[1]
                attempts = len(window)
                if attempts >= min_attempts and st.window_failures / attempts >= degraded_rate:
                    self._evaluate_degraded(key, st, now, ttft)
                    continue
                if items and items[0][0] < ttft_horizon:
                    ttfts.drop_before(ttft_horizon)
                st.ttft_slowdown = None
                base = st.baseline_ttft_ms
                count = len(ordered)
                if base is not None and count >= min_samples:
                    # _TtftSamples.median, inline
                    half = count // 2
                    p50 = ordered[half] if count % 2 else (ordered[half - 1] + ordered[half]) / 2
                    st.ttft_slowdown = p50 / base
                    if st.ttft_slowdown > ratio:
                        self._evaluate_degraded(key, st, now, ttft)

    def _record(self, outcome: Outcome, baseline_ttft_ms: float | None, now: float) -> None:
        cfg = self._cfg
        key = outcome.endpoint
        st = self._states.get(key)
        if st is None:
            # GetHealth promises a reason for every endpoint it has evidence on
            # (empty only with `since` 0, for one it has none on).
            st = self._states[key] = _EndpointHealth(since=now, reason=FIRST_SEEN_REASON)
            self._by_model.setdefault(key.model, set()).add(key)
        if st.state is not HealthState.HEALTHY:  # a healthy one has nothing time-driven
            self._advance(key, st, now)
        if (
            baseline_ttft_ms is not None
            and baseline_ttft_ms != st.baseline_ttft_ms  # unchanged: nothing to update
            and math.isfinite(baseline_ttft_ms)
            and baseline_ttft_ms > 0
        ):
            self._update_baseline(st, baseline_ttft_ms, now)

        if not outcome.error_class.is_attempt:
            # The caller's fault, or the caller gave up (a hedge's loser): no
            # evidence either way. A probe that ended this way has still
            # finished, so it gives its permit back.
            if st.state is HealthState.PROBING and st.probe_grants:
                st.probe_grants.popleft()
            return

        failed = outcome.error_class.counts_against_endpoint or not outcome.success
        st.window.append((now, failed))
        st.window_failures += failed
        if len(st.window) > cfg.failure_rate_max_samples:
            st.window_failures -= st.window.popleft()[1]
        if failed:
            st.consecutive_failures += 1
            st.last_failure_at = now
        else:
            st.consecutive_failures = 0
            ttft = outcome.ttft_ms
            if ttft is not None and math.isfinite(ttft) and ttft >= 0:
                st.ttfts.append(now, ttft, cfg.degraded_ttft_samples)

        retry_after = self._retry_after(outcome) if failed else None

        if st.state is HealthState.EJECTED:
            # Late reports (or panic-mode traffic) do not move the timer,
            # except that a provider asking for longer is obeyed.
            assert st.ejected_until is not None
            if retry_after is not None and now + retry_after > st.ejected_until:
                st.ejected_until = now + retry_after
                st.reason = f"429 Retry-After {_fmt_s(retry_after)}"
            return

        if st.state is HealthState.PROBING:
            if st.probe_grants:
                st.probe_grants.popleft()
            if failed:
                self._eject(
                    key,
                    st,
                    now,
                    f"probe failed ({_describe_failure(outcome)})",
                    retry_after=retry_after,
                    probe_failure=True,
                )
                return
            st.probe_successes += 1
            need = cfg.probe_successes_to_recover
            msg = f"probe {st.probe_successes}/{need} succeeded"
            if st.probe_successes >= need:
                self._recover(key, st, now, f"recovered: {msg}")
            else:
                st.reason = msg
            return

        # HEALTHY or DEGRADED.
        if failed:
            if retry_after is not None:
                self._eject(
                    key,
                    st,
                    now,
                    f"429 Retry-After {_fmt_s(retry_after)}",
                    retry_after=retry_after,
                )
                return
            if st.consecutive_failures >= cfg.consecutive_failures_to_eject:
                self._eject(
                    key,
                    st,
                    now,
                    f"{st.consecutive_failures} consecutive failures "
                    f"(last: {_describe_failure(outcome)})",
                )
                return
            attempts, failures = self._window_counts(st, now)
            if (
                attempts >= cfg.failure_rate_min_attempts
                and failures / attempts >= cfg.failure_rate_to_eject
            ):
                self._eject(key, st, now, self._rate_reason(failures, attempts))
                return
        self._evaluate_degraded(key, st, now, None if failed else outcome.ttft_ms)

    def grant_probe(self, key: EndpointKey) -> None:
        """The router sent a request to this PROBING endpoint: take a permit.

        A no-op when the endpoint is not probing or no permit is free (two
        routers raced for the last one; the request is simply not counted).
        """
        with self._lock:
            st = self._states.get(key)
            if st is None:
                return
            now = self._clock()
            self._advance(key, st, now)
            if st.state is HealthState.PROBING and len(st.probe_grants) < self._cfg.probe_permits:
                st.probe_grants.append(now)

    def retain(self, keys: Collection[EndpointKey]) -> None:
        """Catalog reload: forget endpoints that are no longer in the catalog."""
        keep = keys if isinstance(keys, set | frozenset) else set(keys)
        with self._lock:
            for key in [k for k in self._states if k not in keep]:
                del self._states[key]
                peers = self._by_model.get(key.model)
                if peers is not None:
                    peers.discard(key)
                    if not peers:
                        del self._by_model[key.model]

    # ------------------------------------------------------------------- reads

    def view(self, key: EndpointKey) -> HealthView:
        """The endpoint's health now. Unknown endpoints are HEALTHY (no evidence)."""
        with self._lock:
            return self._view(key, self._clock())

    def views(self, keys: Iterable[EndpointKey]) -> dict[EndpointKey, HealthView]:
        """:meth:`view` for many endpoints at once (one ranking request): one lock, one clock."""
        with self._lock:
            now = self._clock()
            return {key: self._view(key, now) for key in keys}

    def _view(self, key: EndpointKey, now: float) -> HealthView:
        st = self._states.get(key)
        if st is None:
            return HEALTHY
        self._advance(key, st, now)
        return HealthView(
            st.state,
            st.reason,
            st.since,
            st.ejected_until,
            st.last_failure_at,
            st.consecutive_failures,
            st.state is HealthState.PROBING and len(st.probe_grants) < self._cfg.probe_permits,
        )

    def known(self) -> list[EndpointKey]:
        """Endpoints with health state (those that have reported outcomes), sorted."""
        with self._lock:
            return sorted(self._states)

    def transitions(
        self, key: EndpointKey | None = None, limit: int | None = None
    ) -> list[Transition]:
        """Recent state changes, oldest first; optionally for one endpoint, last ``limit``.

        The log is bounded (``transition_log_size``), so it is a window for the
        dashboard, not an audit trail.
        """
        with self._lock:
            items = [t for t in self._log if key is None or t.key == key]
        if limit is not None:
            items = items[-limit:] if limit > 0 else []
        return items

    # --------------------------------------------------------------- internals

    def _advance(self, key: EndpointKey, st: _EndpointHealth, now: float) -> None:
        """Apply the transitions that only need time to pass."""
        if st.state is HealthState.EJECTED:
            assert st.ejected_until is not None
            if now >= st.ejected_until:
                st.ejected_until = None
                st.probe_successes = 0
                st.probe_grants.clear()
                self._set_state(
                    key,
                    st,
                    HealthState.PROBING,
                    now,
                    f"ejection over; probing (0/{self._cfg.probe_successes_to_recover} "
                    "probe successes)",
                )
        elif st.state is HealthState.PROBING:
            horizon = now - self._cfg.probe_timeout_s
            while st.probe_grants and st.probe_grants[0] <= horizon:
                st.probe_grants.popleft()
        elif st.state is HealthState.DEGRADED:
            self._evaluate_degraded(key, st, now)

    def _window_counts(self, st: _EndpointHealth, now: float) -> tuple[int, int]:
        """(attempts, failures) in the failure-rate window, after dropping old ones."""
        horizon = now - self._cfg.failure_rate_window_s
        while st.window and st.window[0][0] < horizon:
            st.window_failures -= st.window.popleft()[1]
        return len(st.window), st.window_failures

    def _rate_reason(self, failures: int, attempts: int) -> str:
        return (
            f"failure rate {failures / attempts:.2f} over {attempts} attempts "
            f"in {_fmt_s(self._cfg.failure_rate_window_s)}"
        )

    def _evaluate_degraded(
        self,
        key: EndpointKey,
        st: _EndpointHealth,
        now: float,
        answered_ttft_ms: float | None = None,
    ) -> None:
        """Move between HEALTHY and DEGRADED according to the current evidence.

        ``answered_ttft_ms``: the TTFT of the success being recorded, if any. An
        answer within ``degraded_ttft_ratio`` of the baseline never newly degrades
        its endpoint by the TTFT rule, whatever the median of older samples says:
        a provider that recovered used to be degraded by the batch that carried
        its first fast answers (its fifth sample in the window, the other four
        from the incident), after the ranking had seen those answers, so it sat in
        the degraded tier, unexplored, for seconds (bench/README.md section 9,
        16f). The next slow answer degrades it as before.
        """
        cfg = self._cfg
        reasons: list[str] = []
        attempts, failures = self._window_counts(st, now)
        if attempts >= cfg.failure_rate_min_attempts and (
            failures / attempts >= cfg.degraded_failure_rate
        ):
            reasons.append(self._rate_reason(failures, attempts))
        horizon = now - cfg.degraded_ttft_max_age_s
        st.ttfts.drop_before(horizon)
        baseline = st.baseline_ttft_ms
        st.ttft_slowdown = None
        if baseline is not None and len(st.ttfts) >= cfg.degraded_min_samples:
            p50 = st.ttfts.median()
            st.ttft_slowdown = p50 / baseline
            # Peers only excuse (their factor is >= 1), so they are consulted only
            # when the endpoint's own slowdown is over the line: rare, and off the
            # common path of every outcome.
            peers = 1.0
            if st.ttft_slowdown > cfg.degraded_ttft_ratio:
                peers = self._peer_slowdown(key, now)
            contradicted = (
                st.state is HealthState.HEALTHY
                and answered_ttft_ms is not None
                and answered_ttft_ms <= baseline * cfg.degraded_ttft_ratio
            )
            if st.ttft_slowdown > cfg.degraded_ttft_ratio * peers and not contradicted:
                reasons.append(
                    f"TTFT p50 {p50:.0f}ms is {st.ttft_slowdown:.1f}\u00d7 baseline "
                    f"{baseline:.0f}ms" + (f" (peers {peers:.1f}\u00d7)" if peers > 1 else "")
                )
        if reasons:
            reason = "; ".join(reasons)
            if st.state is HealthState.DEGRADED:
                st.reason = reason  # same state, fresher numbers: not a transition
            else:
                self._set_state(key, st, HealthState.DEGRADED, now, reason)
        elif st.state is HealthState.DEGRADED:
            self._set_state(key, st, HealthState.HEALTHY, now, f"recovered: was {st.reason}")

    def _update_baseline(self, st: _EndpointHealth, baseline: float, now: float) -> None:
        """Take the caller's hourly P50, except that a slowdown must not raise its own
        yardstick: while DEGRADED the baseline may only fall, for at most
        ``degraded_baseline_freeze_s``. A young router's hour is mostly the incident
        itself, and would otherwise call the endpoint healthy again within seconds;
        an endpoint slow for longer than the freeze is slow, not degraded."""
        frozen = (
            st.state is HealthState.DEGRADED
            and st.baseline_ttft_ms is not None
            and now - st.since < self._cfg.degraded_baseline_freeze_s
        )
        if not frozen or baseline < (st.baseline_ttft_ms or math.inf):
            st.baseline_ttft_ms = baseline

    def _peer_slowdown(self, key: EndpointKey, now: float) -> float:
        """The median slowdown (recent TTFT / own baseline) of the model's other endpoints
        with fresh evidence, at least 1: peers that got faster excuse nothing."""
        horizon = now - self._cfg.degraded_ttft_max_age_s
        slowdowns = []
        for peer in self._by_model.get(key.model, ()):
            ps = self._states[peer]
            if (
                peer != key
                and ps.ttft_slowdown is not None
                and (last := ps.ttfts.last_at()) is not None
                and last >= horizon
            ):
                slowdowns.append(ps.ttft_slowdown)
        return max(1.0, statistics.median(slowdowns)) if slowdowns else 1.0

    def _retry_after(self, outcome: Outcome) -> float | None:
        """A 429's Retry-After, capped; None when absent or meaningless (<= 0, NaN)."""
        ra = outcome.retry_after_s
        if outcome.error_class is not ErrorClass.RATE_LIMITED and outcome.http_status != 429:
            return None
        if ra is None or math.isnan(ra) or ra <= 0:
            return None
        return min(ra, self._cfg.max_retry_after_s)

    def _ejection_duration(self, n: int) -> float:
        """``min(base * mult**n, max) * (1 ± jitter)`` without overflowing for large n."""
        cfg = self._cfg
        if cfg.ejection_multiplier == 1 or n == 0:
            raw = cfg.base_ejection_s
        else:
            log_raw = math.log(cfg.base_ejection_s) + n * math.log(cfg.ejection_multiplier)
            raw = (
                cfg.max_ejection_s if log_raw >= math.log(cfg.max_ejection_s) else math.exp(log_raw)
            )
        raw = min(raw, cfg.max_ejection_s)
        if cfg.ejection_jitter:
            raw *= 1 + self._rng.uniform(-cfg.ejection_jitter, cfg.ejection_jitter)
        return raw

    def _eject(
        self,
        key: EndpointKey,
        st: _EndpointHealth,
        now: float,
        cause: str,
        *,
        retry_after: float | None = None,
        probe_failure: bool = False,
    ) -> None:
        """Eject: for exactly Retry-After if the provider gave one, else the backoff.

        A failed probe is part of the same streak, so it always grows the
        backoff; a fresh ejection after a long healthy spell starts from base.
        On a failed probe that also carried Retry-After, the longer of the two
        wins: the provider's wish is a floor, not a discount.
        """
        if (
            not probe_failure
            and st.recovered_at is not None
            and now - st.recovered_at >= self._cfg.ejection_decay_s
        ):
            st.ejections = 0
        backoff = None
        if retry_after is None or probe_failure:
            backoff = self._ejection_duration(st.ejections)
        duration = max(d for d in (backoff, retry_after) if d is not None)
        st.ejections += 1
        st.ejected_until = now + duration
        st.probe_grants.clear()
        st.probe_successes = 0
        self._set_state(
            key,
            st,
            HealthState.EJECTED,
            now,
            f"{cause}; ejected for {_fmt_s(duration)} (ejection #{st.ejections})",
        )

    def _recover(self, key: EndpointKey, st: _EndpointHealth, now: float, reason: str) -> None:
        """Back to HEALTHY with a clean slate: pre-ejection evidence no longer describes it."""
        st.consecutive_failures = 0
        st.window.clear()
        st.window_failures = 0
        st.ttfts.clear()
        st.probe_grants.clear()
        st.probe_successes = 0
        st.recovered_at = now
        self._set_state(key, st, HealthState.HEALTHY, now, reason)

    def _set_state(
        self,
        key: EndpointKey,
        st: _EndpointHealth,
        to: HealthState,
        now: float,
        reason: str,
    ) -> None:
        transition = Transition(key, st.state, to, reason, now)
        st.state = to
        st.reason = reason
        st.since = now
        if to is not HealthState.EJECTED:
            st.ejected_until = None
        self._log.append(transition)
        if self._on_transition is not None:
            self._on_transition(transition)

    # ------------------------------------------------------- replica snapshots

    def export_state(self) -> dict[str, object]:
        """Every endpoint's state as JSON-able data, for a replica checkpoint.

        Why here: replicas sharing state over Redis (router_service.replication)
        restore a restarted replica from a peer's checkpoint; the fields are
        private to this module, so their (de)serialisation lives next to them.
        Times are absolute (the router clock), so they mean the same on peers.
        """
        with self._lock:
            return {
                "endpoints": [
                    [
                        key.model,
                        key.provider,
                        {
                            "since": st.since,
                            "state": st.state.value,
                            "reason": st.reason,
                            "ejected_until": st.ejected_until,
                            "last_failure_at": st.last_failure_at,
                            "consecutive_failures": st.consecutive_failures,
                            "window": [[t, f] for t, f in st.window],
                            "ttfts": [[t, v] for t, v in st.ttfts],
                            "baseline_ttft_ms": st.baseline_ttft_ms,
                            "ejections": st.ejections,
                            "recovered_at": st.recovered_at,
                            "probe_successes": st.probe_successes,
                        },
                    ]
                    for key, st in self._states.items()
                ],
                "rng": _rng_state_to_json(self._rng),
            }

    def import_state(self, data: dict, keep: Collection[EndpointKey]) -> None:
        """Replace the state with a checkpoint's (endpoints outside ``keep`` are skipped).

        Probe grants are not restored: a permit belongs to the replica that
        granted it and frees itself after ``probe_timeout_s`` anyway.
        """
        keep = keep if isinstance(keep, set | frozenset) else set(keep)
        cfg = self._cfg
        states: dict[EndpointKey, _EndpointHealth] = {}
        for model, provider, d in data["endpoints"]:
            key = EndpointKey(str(model), str(provider))
            if key not in keep:
                continue
            window = deque(
                (float(t), bool(f)) for t, f in d["window"][-cfg.failure_rate_max_samples :]
            )
            states[key] = _EndpointHealth(
                since=float(d["since"]),
                state=HealthState(d["state"]),
                reason=str(d["reason"]),
                ejected_until=d["ejected_until"],
                last_failure_at=d["last_failure_at"],
                consecutive_failures=int(d["consecutive_failures"]),
                window=window,
                window_failures=sum(f for _, f in window),
                ttfts=_TtftSamples(
                    (float(t), float(v))
                    for t, v in d["ttfts"][-cfg.degraded_ttft_samples :]
                    if math.isfinite(float(v))
                ),
                baseline_ttft_ms=d["baseline_ttft_ms"],
                ejections=int(d["ejections"]),
                recovered_at=d["recovered_at"],
                probe_successes=int(d["probe_successes"]),
            )
        with self._lock:
            self._states = states
            if data.get("rng") is not None:
                self._rng.setstate(_rng_state_from_json(data["rng"]))


def _rng_state_to_json(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_state_from_json(data: list) -> tuple:
    version, internal, gauss = data
    return (version, tuple(internal), gauss)
