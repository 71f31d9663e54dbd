"""Hedged streaming attempts (Dean and Barroso's backup requests; Envoy's hedge policy).

Why: a provider that is slow to start (or hung) costs the app its whole wait
before a fallback even begins. With hedging on, when an attempt has no first
token by its endpoint's recent p95 TTFT (``Route.hedge_after_s``, from the
router), the next provider in the plan is started too; whichever produces a
first token first is streamed, and the other is cancelled at once (its
upstream connection closed). Both never stream: the race ends at the first
token, before the app has seen a byte.

Bounds and accounting:

- Off by default; on per request (``provider.hedge`` /
  ``providerOptions.gateway.hedge``) or for every request by the sidecar
  flag ``--hedge``. Streaming requests only (a non-streaming answer's
  "first token" is the whole answer).
- A budget: hedged attempts are at most ``hedge_budget_share`` of the
  requests that had hedging on (default 5%), over a decayed window
  (``HedgeBudget``), plus one, so an incident cannot double the load.
- A reserve inside it for incidents. By definition 5% of healthy attempts
  pass their endpoint's p95, so hedging every one of them would spend the
  whole 5% on the normal tail and leave nothing when a provider slows down
  or hangs (measured in bench/bench_routing.py: the budget was spent before
  every incident but one). So a hedge at the p95 may use only
  ``ROUTINE_FRACTION`` (half) of the budget; once that is spent, an attempt
  still without a first token at ``slow_start_multiple`` times its p95 (the
  point where the sidecar calls it a slow start, ``sidecar.timeouts``) may
  use the rest.
- No hedge without a delay from the router (no data on the endpoint yet),
  nor when the plan has no next provider.
- One backup in flight at a time. A backup that fails while the first
  attempt still waits is replaced by the plan's next route for the same
  model (no further budget: the load is still two attempts): otherwise a
  fast failure (a 503 in a second) would leave the request on a hung first
  attempt for its whole first-token timeout, the case hedging is for.
- Each hedge shows in the response's ``routing.attempts`` (``hedge: true``
  on the backup attempt; ``cancelled: true`` and ``estimated_cost_usd`` on
  the loser: the prompt was sent, so its input tokens are billed) and in
  the metrics (``router_sidecar_hedges_total`` by result,
  ``router_sidecar_hedge_cancelled_cost_usd_total``). A first attempt that
  lost its hedge is reported to the router with ``error_class`` CANCELLED:
  it did not fail (no health or uptime evidence), but it had no first token
  after waiting ``duration_ms``, which the router takes as a lower bound of
  its TTFT. Unreported, a slowed leader kept its recent estimate at the
  router while this sidecar's hedges rescued every request sent to it, and
  every other sidecar (and this one after its local mark) went on choosing
  it. A backup that lost is not reported (``_cancelled`` says why).

Exploration races (``race_explorations``, on by default) use the same race
for a different purpose. Under ``sort: ttft`` the router (or the ranking
client) puts an endpoint with stale or no data first on a bounded share of
requests (``exploration_share``, 5%): by construction one believed slower
than the leader, so each exploration used to cost its request the
difference. A streaming request whose first route is that exploration pick
starts the leader at the same instant; the app gets whichever first token
comes first (a recovered provider wins, and is measured); the other attempt
is not cancelled but read to its own first token (or its first-token
timeout) in the background, closed there, and reported like any attempt, so
the router learns both TTFTs: the explored endpoint's, which is the point of
exploring, and the leader's, which may be the news that it slowed or hung.
Bounds: only exploration picks race (at most the exploration share of
requests, not the hedge budget); the loser is closed at its first token, so
it costs its prompt and at most a token (``routing.attempts``:
``race: true`` on the leader started beside the pick; the loser is shown as
a hedge's loser is, ``cancelled: true`` with ``estimated_cost_usd``, since the
answer no longer waits for it; ``router_sidecar_exploration_races_total`` by
result, ``router_sidecar_exploration_race_cost_usd_total``). Measured in
bench/bench_routing.py (bench/README.md section 9).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from router_common.domain import ErrorClass
from router_common.pb import router_pb2
from sidecar.config import SidecarSettings
from sidecar.preferences import ParsedRequest
from sidecar.ranking_client import Route, speed_ordered
from sidecar.upstream import AttemptRecord

#: What ``Proxy._open_stream`` returns: (StreamStart, response) on a first
#: token, an UpstreamError or None on failure.
Opened = Any


#: Share of the hedge budget that hedges at the plain p95 may use (see the module docstring).
ROUTINE_FRACTION = 0.5


class HedgeBudget:
    """Hedges at most ``share`` of requests (+1), both counted with exponential decay.

    Decay (time constant ``tau_s``) makes the budget follow the recent request
    rate: a calm hour does not bank hedges for a burst. ``routine`` hedges
    (at the p95) may use only ``ROUTINE_FRACTION`` of it. Pure apart from the
    injected clock.
    """

    def __init__(
        self, share: float, clock: Callable[[], float] = time.monotonic, tau_s: float = 60.0
    ) -> None:
        if not (0.0 <= share <= 1.0):
            raise ValueError(f"hedge budget share must be in [0, 1], got {share!r}")
        self._share = share
        self._clock = clock
        self._tau = tau_s
        self._requests = 0.0
        self._hedges = 0.0
        self._at: float | None = None

    def _decay(self) -> None:
        now = self._clock()
        if self._at is not None and now > self._at:
            f = math.exp(-(now - self._at) / self._tau)
            self._requests *= f
            self._hedges *= f
        self._at = now if self._at is None else max(self._at, now)

    def note_request(self) -> None:
        """A request with hedging on started (whether or not it will hedge)."""
        self._decay()
        self._requests += 1.0

    def try_take(self, routine: bool = False) -> bool:
        """Take one hedge if the budget (its routine part, for a ``routine`` one) allows it."""
        self._decay()
        share = self._share * ROUTINE_FRACTION if routine else self._share
        if share <= 0 or self._hedges + 1.0 > share * self._requests + 1.0:
            return False
        self._hedges += 1.0
        return True


class _ProxyHooks(Protocol):
    """The parts of ``sidecar.proxy.Proxy`` a hedge needs (narrow, for the merge and tests)."""

    def started_at(self) -> float: ...

    def _key_for(self, route: Route, rec: AttemptRecord) -> tuple[bool, str | None]: ...

    def _finish_attempt(self, req: ParsedRequest, rec: AttemptRecord) -> None: ...

    def _open_stream(
        self,
        req: ParsedRequest,
        route: Route,
        key: str | None,
        rec: AttemptRecord,
        deadline: float,
        attempt: int,
    ) -> Awaitable[Opened]: ...


class Hedger:
    """Decides whether a streaming attempt gets a backup, and runs the race."""

    def __init__(
        self,
        settings: SidecarSettings,
        clock: Callable[[], float] = time.monotonic,
        on_hedge: Callable[[str, float], None] = lambda result, cost: None,
        on_slow: Callable[[str, str], None] = lambda model, provider: None,
        on_race: Callable[[str, float], None] = lambda result, cost: None,
    ) -> None:
        self._s = settings
        self.budget = HedgeBudget(settings.hedge_budget_share, clock)
        #: Called with the result ("won", "lost", "failed", "both_failed") and the
        #: estimated cost in USD of a cancelled attempt (0 when none was cancelled).
        self.on_hedge = on_hedge
        #: Called with (model, provider) when a first attempt lost its race under a
        #: speed-ordered ranking: it had no first token by its p95 plus the backup's
        #: whole TTFT, a slow start by any measure. Its watch (``sidecar.timeouts``)
        #: dies with it when it is cancelled, and a cancelled attempt is not reported
        #: to the router as a failure, so without this a hedged sidecar would go on
        #: sending its first attempts to a slowed or hung provider, each rescued by
        #: a hedge while the budget lasts (the router hears of its wait, as a lower
        #: bound of its TTFT, only once the outcome is delivered).
        self.on_slow = on_slow
        #: Called with the result of an exploration race ("explored_won", "leader_won",
        #: "both_failed") and the estimated cost in USD of the attempt closed after its
        #: first token (0 when none).
        self.on_race = on_race
        #: Losers of exploration races, read to their first token in the background.
        self._measuring: set[asyncio.Future[None]] = set()

    async def close(self) -> None:
        """Stop measuring race losers (sidecar shutdown): their upstreams are closed."""
        for task in list(self._measuring):
            task.cancel()
        await asyncio.gather(*self._measuring, return_exceptions=True)

    def races(self, req: ParsedRequest, route: Route, explored: str | None) -> bool:
        """Whether this first attempt is an exploration pick to race against the leader."""
        return (
            self._s.race_explorations
            and req.stream
            and explored == route.provider
            and req.preferences.sort == router_pb2.SORT_BY_TTFT
            and not req.preferences.order
        )

    def enabled(self, req: ParsedRequest) -> bool:
        """Hedging on for this request (the request's option wins over the flag)."""
        if not req.stream:
            return False
        return self._s.hedge if req.hedge is None else req.hedge

    async def open(
        self,
        proxy: _ProxyHooks,
        req: ParsedRequest,
        route: Route,
        backups: Sequence[Route],
        key: str | None,
        rec: AttemptRecord,
        deadline: float,
        records: list[AttemptRecord],
        race: bool = False,
    ) -> tuple[Opened, AttemptRecord, Route, int]:
        """Open ``route``, racing a backup if it has no first token by its hedge delay.

        ``backups``: the plan's next routes for the same model, in order. The
        first is the backup; one that fails while ``route`` still waits is
        replaced by the next, so a fast failure does not leave the request on
        a hung first attempt until its first-token timeout (one backup in
        flight at a time, one budget draw per request).

        Returns (what ``_open_stream`` returned for the attempt that is the
        answer, that attempt's record and route, how many backups were
        started). Every started backup's record is in ``records`` and is
        finished here unless it is the returned one; the returned record is
        the caller's to finish or commit, exactly as without hedging.

        ``race``: ``route`` is an exploration pick and ``backups[0]`` the
        leader (``races``): both start at once, and the loser is read to its
        first token in the background and reported (the module docstring).
        """
        first: asyncio.Future[Opened] = asyncio.ensure_future(
            proxy._open_stream(req, route, key, rec, deadline, len(records))
        )
        try:
            due = bool(backups) and (race or await self._hedge_due(first, route))
        except BaseException:
            # The app left while the hedge delay ran: ``asyncio.wait`` does not cancel
            # what it waits on, and the first attempt would keep its upstream open (the
            # provider generating) until its first token or first-byte timeout.
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            raise
        if not due:
            return await first, rec, route, 0
        owners: dict[asyncio.Future[Opened], tuple[AttemptRecord, Route]] = {first: (rec, route)}
        pending: set[asyncio.Future[Opened]] = {first}
        started = 0
        backup_recs: list[AttemptRecord] = []

        def start_backup() -> None:
            """Start the next backup that has a key (a keyless one is finished at once)."""
            nonlocal started
            while started < len(backups):
                backup = backups[started]
                started += 1
                brec = AttemptRecord(backup.provider, backup.upstream_model, proxy.started_at())
                brec.extra = {"race": True} if race else {"hedge": True}
                records.append(brec)
                backup_recs.append(brec)
                ok, bkey = proxy._key_for(backup, brec)
                if ok:
                    fut = asyncio.ensure_future(
                        proxy._open_stream(req, backup, bkey, brec, deadline, len(records))
                    )
                    owners[fut] = (brec, backup)
                    pending.add(fut)
                    return

        start_backup()
        if len(pending) == 1:  # no backup had a key: no race after all
            for brec in backup_recs:
                proxy._finish_attempt(req, brec)
            return await first, rec, route, started
        winner: asyncio.Future[Opened] | None = None
        cost = 0.0
        try:
            while pending and winner is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    result = fut.result()
                    if not isinstance(result, tuple):
                        # Failed (its record is finished as an error already). A backup
                        # that failed while the first attempt still waits is replaced.
                        if fut is not first and first in pending and winner is None:
                            start_backup()
                        continue
                    if winner is None:
                        winner = fut
                    else:  # both had a first token in the same instant: drop this one
                        result[0].resp.close()
                        cost += _cancelled(*owners[fut], req, report=True)
        except BaseException:  # the app went away (or a bug): no attempt may outlive us
            for fut in owners:
                fut.cancel()
            await asyncio.gather(*owners, return_exceptions=True)
            raise
        if winner is None:  # all failed: the backups are finished here, the first by the caller
            for brec in backup_recs:
                proxy._finish_attempt(req, brec)
            (self.on_race if race else self.on_hedge)("both_failed", 0.0)
            return first.result(), rec, route, started
        won_rec, won_route = owners[winner]
        if race:
            for fut in pending:  # the loser, still without a first token: measured
                loser, loser_route = owners[fut]
                # The app's routing.attempts shows it as a hedge's loser is shown (the
                # answer no longer waits for it); the record itself runs on and is reported.
                shown = replace(loser, extra=dict(loser.extra or {}))
                cost += _cancelled(shown, loser_route, req, report=False, how="raced")
                records[next(i for i, r in enumerate(records) if r is loser)] = shown
                self._measure(proxy, req, fut, loser)
            measured = {id(owners[fut][0]) for fut in pending}  # records compare by value
            for other in (rec, *backup_recs):  # the failed ones: finished here, like a hedge's
                if other is not won_rec and id(other) not in measured:
                    proxy._finish_attempt(req, other)
            self.on_race("explored_won" if winner is first else "leader_won", cost)
            return winner.result(), won_rec, won_route, started
        try:
            for fut in pending:  # the loser: cancelled at once, which closes its upstream
                fut.cancel()
                await asyncio.gather(fut, return_exceptions=True)
                cost += _cancelled(*owners[fut], req, report=fut is first)
        except BaseException:
            # The app left while the loser closed: nobody will read the winner either,
            # and its provider would go on generating until the connection was collected.
            winner.result()[0].resp.close()
            raise
        # The caller commits the winner; every other attempt's bookkeeping is done here
        # (a cancelled one is not reported to the router; a genuine failure is).
        for other in (rec, *backup_recs):
            if other is not won_rec:
                proxy._finish_attempt(req, other)
        self.on_hedge("won" if winner is not first else "lost", cost)
        if winner is not first and speed_ordered(req.preferences):
            self.on_slow(req.model, route.provider)
        return winner.result(), won_rec, won_route, started

    async def _hedge_due(self, first: asyncio.Future[Opened], route: Route) -> bool:
        """Wait out ``route``'s hedge delay; True when a backup should start (budget taken)."""
        delay = route.hedge_after_s
        if delay is None:
            return False
        delay = max(delay, self._s.hedge_min_delay_s)
        done, _ = await asyncio.wait({first}, timeout=delay)
        if done:
            return False
        if self.budget.try_take(routine=True):
            return True
        # The routine part is spent: the rest is kept for a clearly slow start.
        late = delay * self._s.slow_start_multiple
        if not late > delay:
            return False
        done, _ = await asyncio.wait({first}, timeout=late - delay)
        return not done and self.budget.try_take()

    def _measure(
        self,
        proxy: _ProxyHooks,
        req: ParsedRequest,
        fut: asyncio.Future[Opened],
        rec: AttemptRecord,
    ) -> None:
        """Read a race's loser to its first token in the background, close it, report it."""

        async def measure() -> None:
            try:
                opened = await fut
            except asyncio.CancelledError:
                fut.cancel()  # shutdown: closes its upstream
                raise
            if isinstance(opened, tuple):
                opened[0].resp.close()  # its first token is all this attempt was for
                rec.finish_ok(1, None, generation_seen=False)
            proxy._finish_attempt(req, rec)  # a timeout or failure is reported as one

        task = asyncio.ensure_future(measure())
        self._measuring.add(task)
        task.add_done_callback(self._measuring.discard)


def _cancelled(
    rec: AttemptRecord, route: Route, req: ParsedRequest, report: bool, how: str = "hedged"
) -> float:
    """Mark a hedge's (or race's) losing attempt; its estimated cost (input tokens, USD).

    ``report``: whether the router hears of it, as CANCELLED (not a failure).
    A first attempt that lost its hedge had no first token by its p95 plus the
    backup's whole TTFT: its wait is a lower bound of its TTFT as strong as a
    first-token timeout's, and the router takes it as one
    (``router_service.sketches.recent``). A backup that lost is not reported:
    its wait is only as long as the first attempt's tail went on, often near
    its own median, and a lower bound taken at a timeout's weight would push a
    healthy second choice's estimate up on every routine hedge. A race's loser
    is marked on a copy for ``routing.attempts`` only: its own record runs on
    and is reported with the TTFT it measures.
    """
    rec.finish_error(ErrorClass.CANCELLED, f"cancelled: the other {how} attempt answered first")
    rec.report = report
    cost = req.estimated_input_tokens * route.input_price_per_million / 1e6
    rec.extra = {**(rec.extra or {}), "cancelled": True, "estimated_cost_usd": round(cost, 9)}
    return cost
