"""A hedge's winner is closed when the app leaves while the loser winds down.

Found reading ``Hedger.open``: after the backup won, the first attempt is
cancelled and awaited; an app that left during that await (its request
cancelled) left the winner's upstream response open, the provider still
generating an answer nobody would read, until the connection was collected.
Told without sockets: a fake proxy whose loser takes a while to close.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sidecar.config import SidecarSettings
from sidecar.hedging import Hedger
from sidecar.preferences import ParsedRequest, parse_request
from sidecar.ranking_client import Route
from sidecar.upstream import AttemptRecord

MSGS = [{"role": "user", "content": "hello"}]


@dataclass
class _Response:
    closed: bool = False

    def close(self) -> None:
        self.closed = True


@dataclass
class _Start:
    """What ``Proxy._open_stream`` returns first on a first token: it holds the response."""

    resp: _Response


@dataclass
class _SlowToCloseLoser:
    """The first attempt never answers; once cancelled, it closes only when told."""

    winner_response: _Response = field(default_factory=_Response)
    loser_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    loser_may_close: asyncio.Event = field(default_factory=asyncio.Event)
    finished: list[str] = field(default_factory=list)

    def started_at(self) -> float:
        return 0.0

    def _key_for(self, route: Route, rec: AttemptRecord) -> tuple[bool, str | None]:
        return True, None

    def _finish_attempt(self, req: ParsedRequest, rec: AttemptRecord) -> None:
        self.finished.append(rec.provider)

    async def _open_stream(
        self,
        req: ParsedRequest,
        route: Route,
        key: str | None,
        rec: AttemptRecord,
        deadline: float,
        attempt: int,
    ) -> object:
        if route.provider == "beta":
            return (_Start(self.winner_response), None)
        try:
            await asyncio.Event().wait()  # alpha: no first token, ever
        except asyncio.CancelledError:
            self.loser_cancelled.set()
            await self.loser_may_close.wait()  # closing its upstream takes a while
            raise
        raise AssertionError("unreachable")


def _route(provider: str, hedge_after_s: float | None) -> Route:
    return Route(
        provider=provider,
        base_url="http://127.0.0.1:9",
        api_key_env="",
        zero_data_retention=False,
        upstream_model="m",
        hedge_after_s=hedge_after_s,
    )


async def test_app_leaving_while_the_loser_closes_closes_the_winner() -> None:
    proxy = _SlowToCloseLoser()
    hedger = Hedger(SidecarSettings(hedge_min_delay_s=0.0))
    req = parse_request({"model": "m", "messages": MSGS, "stream": True})
    rec = AttemptRecord("alpha", "m", 0.0)
    records = [rec]
    hedged = asyncio.ensure_future(
        hedger.open(
            proxy, req, _route("alpha", 0.001), [_route("beta", None)], None, rec, 1e12, records
        )
    )
    await asyncio.wait_for(proxy.loser_cancelled.wait(), timeout=5)
    assert not hedged.done()  # the hedger waits for the loser to close
    hedged.cancel()  # the app leaves now
    await asyncio.gather(hedged, return_exceptions=True)
    assert hedged.cancelled()
    assert proxy.winner_response.closed  # nobody will read the winner: its upstream is closed
