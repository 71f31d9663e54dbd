"""The incident script, and how "detected", "routed around" and "recovered" are measured.

Script (times are fractions of a cycle: ``--duration``, or 90 s repeated when live):

* **fail**: provider A answers every completion with 503 from 15% to 40% of
  the cycle.
* **slowdown**: provider B's TTFT and inter-token delay are ×3 from 35% of the
  cycle for 25% of it, at most 15 s (the router, on its default tuning, lets
  slow evidence age out after 30 s, ``degraded_ttft_max_age_s``; a longer
  slowdown would be forgotten and re-detected while still running, which is
  correct behaviour but muddles a one-minute demo).

The two overlap on purpose: the router must cope with both at once.

Measurements (all in seconds, pure functions of recorded data so they are
unit-tested on synthetic records):

* **detected after**: from the incident's start until the first ``GetHealth``
  poll (every 0.25 s) that reports any of the provider's endpoints (in the
  models the traffic uses) in a state other than HEALTHY (degraded, ejected or
  probing). Only polls before the incident's end count; later is "not detected".
* **routed around after**: the incident window is cut into 1-second bins by
  request send time. A bin is *bad* when more than ``max_share`` (2% for fail,
  5% for slowdown) of its *eligible* requests *match*:

  - fail: eligible = requests whose first provider the router chose (every
    label but "pinned", which names one provider and cannot be routed
    around) and that tried some provider, minus *probes*; match = the first
    provider tried (``routing.attempts[0]``) was A. Fallback after a failed
    first try does not count as routed around: the user paid the failed
    attempt's latency. A probe is a request sent while, or up to
    ``PROBE_LOOKBACK_S`` after, ``GetHealth`` showed A's endpoint for that
    model PROBING: half-open probing deliberately puts A first to test it
    (the sidecar reuses a ranking for up to 2 s, hence the look-back). Probes
    are counted separately (``probe_first_attempts``) so they stay visible.
  - slowdown: eligible = successful requests sorted by TTFT; match = answered
    by B.

  Routed around = the end of the last bad bin, provided at least
  ``min_clean_s`` (2 s) of bins with eligible traffic follow it before the
  incident ends (no bad bin at all gives 0). Otherwise "not routed around".
  "Stays clean until the end" is deliberate: being routed around for a moment
  and then sent back to the bad provider is not success.
* **recovered after**: from the incident's end until the first poll with all
  of the provider's endpoints HEALTHY again.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import aiohttp

from router_demo.traffic import ROUTED_LABELS, RequestRecord

HEALTHY = "healthy"
PROBING = "probing"
#: Sidecar ranking cache TTL (2 s) + GetHealth poll interval (0.25 s) + margin.
PROBE_LOOKBACK_S = 2.5
#: (poll time in demo seconds, {(model, provider): state name})
HealthSample = tuple[float, Mapping[tuple[str, str], str]]


@dataclass(frozen=True, slots=True)
class IncidentPlan:
    """One scripted incident on one provider, in demo seconds."""

    kind: Literal["fail", "slowdown"]
    provider: str
    start_s: float
    end_s: float
    status: int = 503
    factor: float = 3.0

    def describe(self) -> str:
        if self.kind == "fail":
            return f"{self.provider} fails ({self.status})"
        return f"{self.provider} slows down ×{self.factor:g}"

    def control_body(self) -> dict[str, object]:
        """The fake provider's control-API body. ``duration_s`` (+1 s) is a safety net:
        the incident ends by itself even if the demo dies before its DELETE."""
        body: dict[str, object] = {"kind": self.kind, "duration_s": self.end_s - self.start_s + 1}
        if self.kind == "fail":
            body["status"] = self.status
        else:
            body["factor"] = self.factor
        return body


def plan_incidents(
    cycle_s: float,
    fail_provider: str,
    slow_provider: str,
    factor: float = 3.0,
    offset_s: float = 0.0,
) -> list[IncidentPlan]:
    """The script for one cycle starting at ``offset_s`` (see the module docstring)."""
    if fail_provider == slow_provider:
        raise ValueError("the failing and the slow provider must differ")
    slow_start = offset_s + 0.35 * cycle_s
    return [
        IncidentPlan("fail", fail_provider, offset_s + 0.15 * cycle_s, offset_s + 0.4 * cycle_s),
        IncidentPlan(
            "slowdown",
            slow_provider,
            slow_start,
            slow_start + min(0.25 * cycle_s, 15.0),
            factor=factor,
        ),
    ]


# ----------------------------------------------------------------- measurements


def detected_after(
    samples: Iterable[HealthSample], provider: str, start: float, end: float
) -> float | None:
    """Seconds from ``start`` to the first poll in [start, end] showing the provider unhealthy."""
    for t, states in samples:
        if t < start:
            continue
        if t > end:
            break
        if any(st != HEALTHY for (_m, p), st in states.items() if p == provider):
            return t - start
    return None


def recovered_after(samples: Iterable[HealthSample], provider: str, end: float) -> float | None:
    """Seconds from ``end`` to the first later poll with every endpoint of the provider healthy."""
    for t, states in samples:
        if t < end:
            continue
        mine = [st for (_m, p), st in states.items() if p == provider]
        if mine and all(st == HEALTHY for st in mine):
            return t - end
    return None


def routed_around_after(
    records: Iterable[RequestRecord],
    start: float,
    end: float,
    eligible: Callable[[RequestRecord], bool],
    matches: Callable[[RequestRecord], bool],
    *,
    bin_s: float = 1.0,
    max_share: float = 0.02,
    min_clean_s: float = 2.0,
) -> float | None:
    """Seconds from ``start`` until the bad provider stopped getting matching traffic for good.

    See the module docstring for the exact rule.
    """
    n_bins = max(1, int((end - start) / bin_s))
    total = [0] * n_bins
    bad = [0] * n_bins
    for rec in records:
        if not start <= rec.t < start + n_bins * bin_s or not eligible(rec):
            continue
        k = int((rec.t - start) / bin_s)
        total[k] += 1
        if matches(rec):
            bad[k] += 1
    last_bad = -1
    for k in range(n_bins):
        if total[k] and bad[k] / total[k] > max_share:
            last_bad = k
    clean_with_traffic = sum(1 for k in range(last_bad + 1, n_bins) if total[k])
    if clean_with_traffic * bin_s < min_clean_s:
        return None
    return (last_bad + 1) * bin_s


def probe_detector(
    samples: Iterable[HealthSample], provider: str, lookback_s: float = PROBE_LOOKBACK_S
) -> Callable[[RequestRecord], bool]:
    """A predicate: was this request sent while (or just after) the router was probing
    ``provider`` for the request's model? See the module docstring."""
    probing: dict[str, list[float]] = {}
    for t, states in samples:
        for (model, p), st in states.items():
            if p == provider and st == PROBING:
                probing.setdefault(model, []).append(t)

    def is_probe(rec: RequestRecord) -> bool:
        times = probing.get(rec.model)
        if not times:
            return False
        i = bisect.bisect_left(times, rec.t - lookback_s)
        # A poll just after the send time can be the first to show the state.
        return i < len(times) and times[i] <= rec.t + 0.5

    return is_probe


def routed_around_for(
    plan: IncidentPlan,
    records: Sequence[RequestRecord],
    is_probe: Callable[[RequestRecord], bool] = lambda _r: False,
) -> float | None:
    """Apply :func:`routed_around_after` with the incident kind's eligibility and match rules."""
    if plan.kind == "fail":
        return routed_around_after(
            records,
            plan.start_s,
            plan.end_s,
            eligible=lambda r: (
                r.label in ROUTED_LABELS and r.first_provider is not None and not is_probe(r)
            ),
            matches=lambda r: r.first_provider == plan.provider,
            max_share=0.02,
        )
    return routed_around_after(
        records,
        plan.start_s,
        plan.end_s,
        eligible=lambda r: r.label == "ttft" and r.ok,
        matches=lambda r: r.provider == plan.provider,
        max_share=0.05,
    )


@dataclass(slots=True)
class IncidentResult:
    """What happened to one incident (all times in seconds)."""

    plan: IncidentPlan
    started_at: float | None  # demo time the incident was actually injected
    ended_at: float | None
    detected_after_s: float | None
    routed_around_after_s: float | None
    recovered_after_s: float | None
    probe_first_attempts: int = 0
    #: Ended early by Ctrl-C or SIGTERM, before its planned end: too short to judge.
    cut_short: bool = False

    @property
    def passed(self) -> bool:
        return self.detected_after_s is not None and self.routed_around_after_s is not None

    def to_json(self) -> dict[str, object]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 2)

        return {
            "kind": self.plan.kind,
            "provider": self.plan.provider,
            "description": self.plan.describe(),
            "start_s": r(self.started_at),
            "end_s": r(self.ended_at),
            "detected": self.detected_after_s is not None,
            "detected_after_s": r(self.detected_after_s),
            "routed_around": self.routed_around_after_s is not None,
            "routed_around_after_s": r(self.routed_around_after_s),
            "recovered": self.recovered_after_s is not None,
            "recovered_after_s": r(self.recovered_after_s),
            "probe_first_attempts": self.probe_first_attempts,
            "cut_short": self.cut_short,
        }


def evaluate(
    plan: IncidentPlan,
    started_at: float,
    ended_at: float,
    records: Sequence[RequestRecord],
    samples: Sequence[HealthSample],
    *,
    cut_short: bool = False,
) -> IncidentResult:
    """Measure one incident that ran from ``started_at`` to ``ended_at`` (actual times);
    ``cut_short`` marks one the run's interruption ended before its planned end."""
    actual = IncidentPlan(
        plan.kind, plan.provider, started_at, ended_at, status=plan.status, factor=plan.factor
    )
    is_probe = probe_detector(samples, plan.provider)
    probes = sum(
        1
        for rec in records
        if started_at <= rec.t < ended_at
        and rec.first_provider == plan.provider
        and rec.label in ROUTED_LABELS
        and is_probe(rec)
    )
    return IncidentResult(
        plan=plan,
        started_at=started_at,
        ended_at=ended_at,
        detected_after_s=detected_after(samples, plan.provider, started_at, ended_at),
        routed_around_after_s=routed_around_for(actual, records, is_probe),
        recovered_after_s=recovered_after(samples, plan.provider, ended_at),
        probe_first_attempts=probes,
        cut_short=cut_short,
    )


# ----------------------------------------------------------------- the script


@dataclass
class IncidentScript:
    """Injects the planned incidents through each fake provider's control API, on time."""

    plans: list[IncidentPlan]
    control_urls: Mapping[str, str]  # provider → http://127.0.0.1:PORT
    clock: Callable[[], float]  # seconds since the demo started
    started: dict[int, float] = field(default_factory=dict)  # index in plans → actual start
    ended: dict[int, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def active(self) -> list[IncidentPlan]:
        return [p for i, p in enumerate(self.plans) if i in self.started and i not in self.ended]

    async def run(self, stop: asyncio.Event) -> None:
        events = sorted(
            [(p.start_s, 0, i) for i, p in enumerate(self.plans)]
            + [(p.end_s, 1, i) for i, p in enumerate(self.plans)]
        )
        timeout = aiohttp.ClientTimeout(total=3.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                for at, is_end, i in events:
                    delay = at - self.clock()
                    if delay > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        break
                    await self._apply(session, i, end=bool(is_end))
            finally:
                # Stopped early (Ctrl-C, duration over): end whatever is still running.
                for i in list(self.started):
                    if i not in self.ended:
                        with contextlib.suppress(Exception):
                            await self._apply(session, i, end=True)

    async def _apply(self, session: aiohttp.ClientSession, i: int, *, end: bool) -> None:
        plan = self.plans[i]
        url = f"{self.control_urls[plan.provider]}/_fake/incidents"
        try:
            if end:
                async with session.delete(url) as resp:
                    resp.raise_for_status()
                self.ended[i] = self.clock()
            else:
                async with session.post(url, json=plan.control_body()) as resp:
                    resp.raise_for_status()
                self.started[i] = self.clock()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.errors.append(f"{'ending' if end else 'starting'} {plan.describe()}: {exc}")
            if end:
                self.ended[i] = self.clock()
