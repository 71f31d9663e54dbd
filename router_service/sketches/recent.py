"""A recent-data estimate of one endpoint, beside the hourly sketches: decayed TTFT and failures.

Why: the 5-minute digests answer "what is this endpoint like?", but a provider
that slowed down 3 s ago still looks fast in them for minutes, and one that
recovered still looks slow. Ranking needs "what is it like *now*?", within
seconds, at tens of requests per second.

How (Finagle's Peak EWMA, without the in-flight term the router cannot see):

- **Time-decayed average.** Each successful TTFT ``x`` arriving ``dt`` seconds
  after the previous one moves the estimate by ``w = 1 - exp(-dt / tau)``:
  ``est += w * (x - est)``. Weighting by elapsed time rather than by count
  makes the estimate's memory ``tau`` seconds whatever the request rate, and
  a sample after a silence of ``replace_after_s`` or more (a probe of an
  endpoint nobody used) replaces the old value outright: a recovered endpoint
  is seen on its first answer, and one that looked slow because of a passing
  outlier is not locked out of traffic until several probes have averaged the
  outlier away (its estimate cannot improve while it gets no traffic). Such an
  estimate is marked ``lone`` until the next answer: ranking lets it lead but
  not share the near-best band (``ordering.spread_band``).
- **Peak.** A sample above the estimate is taken with ``tau_up`` (shorter),
  so a slowdown is believed faster than a speed-up; that is the asymmetry
  that keeps traffic off an endpoint that got slow (a false "slow" costs one
  exploration to undo, a false "fast" costs many requests).
- **Warm-up.** The k-th sample after a replace weighs at least ``1/k``: the
  first few samples are averaged equally instead of the first one counting
  like ``tau`` seconds of history (``RecentTracker._warm``).
- **Timeouts are a lower bound.** An attempt that gave up waiting for its
  first token after ``W`` ms says its TTFT was more than ``W``: when ``W`` is
  above the estimate it pulls the estimate toward ``W`` with at least
  ``timeout_weight`` (``RecentTracker._raise_to``). Counted only as a failure,
  a 6x slowdown whose first attempts timed out left the estimate where the
  one or two slow answers before them had put it (1.8x), and a sidecar whose
  local cooldown had ended sent the provider a share of its traffic on that
  estimate ten seconds later. A hedge's loser (CANCELLED without a TTFT) is
  the same evidence: it had no first token by its endpoint's p95 plus the
  whole TTFT of the backup that beat it. Not reported, a slowed leader kept
  its estimate while every request to it was rescued by a hedge.
- **Failures.** A decayed failure ratio with the same clock (``tau_fail``),
  so "recovered" can also mean "answers again".

Pure and clock-free: every update and read takes ``now`` from the caller.
O(1) memory per endpoint, O(1) per outcome.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from router_common.limits import MAX_TTFT_MS
from router_service.model import RecentEstimate

__all__ = ["DEFAULT_RECENT_CONFIG", "RecentConfig", "RecentTracker"]


@dataclass(frozen=True, slots=True)
class RecentConfig:
    """Time constants of the recent estimate, each with its default and why.

    =========  =======  ================================================================
    field      default  meaning
    =========  =======  ================================================================
    tau_s      3.0      memory of the TTFT average, s: at 20 rps about 60 samples, enough
                        to damp one slow outlier, short enough that a speed-up is
                        followed within ~5-10 s
    tau_up_s   2.0      memory for samples above the estimate (the "peak"): a slowdown
                        shows within 1-3 s (a 6x one after one or two samples);
                        shorter made equal endpoints' estimates too noisy to share
                        traffic (herding in bench/bench_routing.py)
    tau_fail_s 5.0      memory of the decayed failure ratio, s
    replace_   1.5      a TTFT sample arriving this long (s) after the previous one
    after_s             replaces the estimate: an endpoint without a sample for 1.5 s
                        at tens of requests per second gets no traffic but
                        explorations, so its old value is a guess about the past and
                        the new one is all that is known about now. The same as the
                        ranking's ``stale_after_s``: a stale endpoint is explored,
                        and its exploration's answer is taken as it is. Measured
                        (bench/bench_routing.py): with the time-weighted average
                        alone (weight 0.49 after 2 s), a provider that had slowed
                        6x and recovered needed two or three probes, seconds apart,
                        to be promoted back, and one of four equal providers whose
                        estimate a startup outlier had pushed 30% up was left
                        without traffic for seconds; with 2 s here and staleness at
                        1.5 s, explorations 1.5-2 s apart were averaged and the
                        recovered provider led again only 8-9 s after its recovery
    collapse_  0.5      in (0, 1): an answer below this fraction of an estimate that rests
    ratio               on at most ``collapse_max_samples`` samples since its last replace
                        replaces it (``RecentTracker._collapses``). Under the lognormal
                        noise of a steady endpoint (sigma 0.2-0.5) an answer at half the
                        median is a 1-in-4,000 to 1-in-12 draw, and the rule only looks at
                        estimates of one or two samples (endpoints known from
                        explorations), where the cost of a lucky draw is that of the
                        replace after a silence: one answer taken as it came
    collapse_  2        the most samples since the last replace an estimate may rest on
    max_                for a collapse to replace it; an endpoint with traffic has
    samples             hundreds, and its speed-ups are followed by the average alone
    timeout_   0.5      in (0, 1]: the least weight with which a first-token timeout
    weight              (or a hedge's cancelled loser: the same rule, its wait is past
                        the p95 plus the winner's TTFT)
                        after ``W`` ms pulls an estimate below ``W`` toward it. The
                        sidecar's timeout is twice the endpoint's p99 (at least
                        500 ms), beyond its normal worst case, so one timeout is
                        stronger evidence than one slow answer (which weighs ~0.05
                        in a burst): after one, a 6x slowdown's estimate is past 3x
                        and out of the near-best band; an answered attempt's TTFT
                        is never weighted this way (one outlier among many answers
                        does not flip the estimate)
    =========  =======  ================================================================
    """

    tau_s: float = 3.0
    tau_up_s: float = 2.0
    tau_fail_s: float = 5.0
    replace_after_s: float = 1.5
    timeout_weight: float = 0.5
    collapse_ratio: float = 0.5
    collapse_max_samples: int = 2

    def __post_init__(self) -> None:
        for name in ("tau_s", "tau_up_s", "tau_fail_s", "replace_after_s", "timeout_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"RecentConfig.{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"RecentConfig.{name} must be > 0, got {value!r}")
        if self.timeout_weight > 1:
            raise ValueError(
                f"RecentConfig.timeout_weight must be <= 1, got {self.timeout_weight!r}"
            )
        if not (0 < self.collapse_ratio < 1):  # also False for NaN
            raise ValueError(
                f"RecentConfig.collapse_ratio must be in (0, 1), got {self.collapse_ratio!r}"
            )
        n = self.collapse_max_samples
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"RecentConfig.collapse_max_samples must be an int >= 0, got {n!r}")


DEFAULT_RECENT_CONFIG = RecentConfig()


class RecentTracker:
    """The decayed TTFT and failure ratio of one endpoint (not thread-safe: the store locks)."""

    __slots__ = (
        "_attempt_at",
        "_cfg",
        "_fail",
        "_lone",
        "_run",
        "_samples",
        "_ttft",
        "_ttft_at",
    )

    def __init__(self, config: RecentConfig = DEFAULT_RECENT_CONFIG) -> None:
        self._cfg = config
        self._ttft: float | None = None
        self._ttft_at: float | None = None
        self._fail = 0.0
        self._attempt_at: float | None = None
        self._samples = 0
        #: TTFT samples since the estimate was last replaced, up to _RUN_CAP (see _warm).
        self._run = 0
        #: The estimate is one answer that replaced an older one after a silence.
        self._lone = False

    def record(
        self,
        now: float,
        failed: bool | None,
        ttft_ms: float | None,
        waited_ms: float | None = None,
    ) -> None:
        """One attempt at ``now``: ``failed`` None means not counted (the caller's fault);
        ``waited_ms`` set: it was given up (a timeout, a hedge's loser) after waiting
        that long for its first token."""
        cfg = self._cfg
        if failed is not None:
            last = self._attempt_at
            if last is None:
                self._fail = 1.0 if failed else 0.0
            else:
                w = 1.0 - math.exp(-max(0.0, now - last) / cfg.tau_fail_s)
                self._fail += w * ((1.0 if failed else 0.0) - self._fail)
            self._attempt_at = now if last is None else max(last, now)
        if waited_ms is not None:
            self._raise_to(now, waited_ms)
        if not _is_ttft_sample(failed, ttft_ms):
            return
        assert ttft_ms is not None
        est = self._ttft
        if (
            est is None
            or self._ttft_at is None
            or now - self._ttft_at >= cfg.replace_after_s
            or self._collapses(est, ttft_ms)
        ):
            self._ttft = ttft_ms
            self._run = 1
            self._lone = est is not None
        else:
            self._lone = False
            tau = cfg.tau_up_s if ttft_ms > est else cfg.tau_s
            w = self._warm(_ttft_weight(max(0.0, now - self._ttft_at), tau))
            self._ttft = est + w * (ttft_ms - est)
        self._ttft_at = now if self._ttft_at is None else max(self._ttft_at, now)
        self._samples += 1

    def record_many(
        self, now: float, attempts: Iterable[tuple[bool | None, float | None, float | None]]
    ) -> None:
        """``record(now, failed, ttft_ms, waited_ms)`` for each (failed, ttft_ms, waited_ms),
        in order.

        The ingestion path feeds a batch's attempts of one endpoint together,
        all at one ``now``. Once the estimates stand at ``now``, the next
        attempts of that instant have ``dt = 0``: the failure ratio's weight is
        exactly 0 and a TTFT's weight is the burst constant, so they are
        applied with the constants computed once (the same floating-point
        expressions ``record`` evaluates, so the same results).
        """
        cfg = self._cfg
        w_up, w_down = _ttft_weight(0.0, cfg.tau_up_s), _ttft_weight(0.0, cfg.tau_s)
        for failed, ttft_ms, waited_ms in attempts:
            est = self._ttft
            if (
                est is None
                or self._ttft_at != now
                or (failed is not None and self._attempt_at != now)
                or waited_ms is not None
                or self._run <= cfg.collapse_max_samples  # thin: ``record`` checks for a collapse
            ):
                self.record(now, failed, ttft_ms, waited_ms)
                continue
            if not _is_ttft_sample(failed, ttft_ms):
                continue
            assert ttft_ms is not None
            w = self._warm(w_up if ttft_ms > est else w_down)
            self._ttft = est + w * (ttft_ms - est)
            self._samples += 1
            self._lone = False

    def _raise_to(self, now: float, waited_ms: float) -> None:
        """A timeout after ``waited_ms``: that attempt's TTFT was longer (``timeout_weight``).

        Only ever raises the estimate, and is not a sample: when the endpoint
        last answered (what staleness, exploration and the replace rule go by)
        and the warm-up count stay as they were, so its next real answer after
        a silence still replaces the estimate.
        """
        est = self._ttft
        if est is None or not waited_ms > est:  # also False for NaN
            return
        waited_ms = min(waited_ms, MAX_TTFT_MS)
        at = self._ttft_at
        w = _ttft_weight(0.0 if at is None else max(0.0, now - at), self._cfg.tau_up_s)
        floor = self._cfg.timeout_weight
        self._ttft = est + (w if w > floor else floor) * (waited_ms - est)

    def _collapses(self, est: float, ttft_ms: float) -> bool:
        """An answer far below an estimate that rests on few samples: a change, not noise.

        An endpoint without traffic is known only from explorations, and two of
        them less than ``replace_after_s`` apart are averaged. Measured in
        bench/bench_routing.py: a provider that had slowed 6x answered at its
        normal speed 0.4 s after recovering, was averaged with the two slow
        answers before (545 -> 396 ms), and waited four seconds for its next
        exploration while its recovery cost the app 1.4-1.75x. Replaced, it
        leads on that answer (as ``lone``: only as the best), and its traffic
        confirms or corrects it at once.
        """
        cfg = self._cfg
        return self._run <= cfg.collapse_max_samples and ttft_ms < est * cfg.collapse_ratio

    def _warm(self, w: float) -> float:
        """The weight of the next sample: ``w``, but at least ``1/k`` for the k-th since a replace.

        Without it the first sample after a replace counted like seconds of
        history: ``tau`` seconds of samples were needed to forget it, however
        many arrived. One slow first answer (1.6x, lognormal noise) kept an
        equal provider's estimate high for ~5 s in bench/bench_routing.py's
        herd while it was getting samples at the others' level. With the
        floor the first samples are averaged equally (a plain mean), and the
        time-weighted average takes over once its weight is the larger.
        """
        run = self._run + 1 if self._run < _RUN_CAP else _RUN_CAP
        self._run = run
        floor = 1.0 / run
        return w if w > floor else floor

    def estimate(self) -> RecentEstimate:
        return RecentEstimate(
            self._ttft, self._ttft_at, self._fail, self._attempt_at, self._samples, self._lone
        )


def _is_ttft_sample(failed: bool | None, ttft_ms: float | None) -> bool:
    """A TTFT moves the estimate only from an attempt that did not fail, and only
    when it is a real duration."""
    return ttft_ms is not None and math.isfinite(ttft_ms) and ttft_ms >= 0 and not failed


#: Past this many samples since a replace the 1/k floor is far below any weight.
_RUN_CAP = 1 << 20


def _ttft_weight(dt: float, tau: float) -> float:
    """The weight of a TTFT sample ``dt`` seconds after the estimate's last one.

    A burst of samples in one instant still moves the estimate: each counts as
    if ``tau / 20`` had passed, so no sample weighs nothing.
    """
    return 1.0 - math.exp(-max(dt, tau / 20.0) / tau)
