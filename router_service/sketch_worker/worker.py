"""The sketch worker's process: the stats store and the dashboard series, fed by the router.

Runs ``python -m router_service.sketch_worker --fd N`` with one end of a
socketpair the router made. It owns an ``InMemoryStatsStore`` and a
``DashboardSeries`` (unchanged: the same classes the router uses in process),
applies what the router sends in order, and refreshes quantiles on the same
cadence the router's own refresh loop keeps (at most every
``min_interval_s`` after new data, at least every ``max_interval_s``),
sending back the stats of every endpoint whose cached value changed.

It exits when the router's end closes (the router stopped or died: a worker
never outlives its router) and on SIGTERM/SIGINT. Nothing it computes is
authoritative beyond its router's lifetime, so there is nothing to save.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import select
import signal
import socket
import sys
import time
from typing import Any

from router_common.domain import Clock, EndpointKey
from router_common.logs import configure_logging
from router_service.dashboard_series import DashboardSeries
from router_service.model import EndpointStats
from router_service.sketch_worker.frames import FrameBuffer, outcomes_of, send_blocking
from router_service.sketches.store import InMemoryStatsStore

_READ = 1 << 20
#: Scheduling niceness added to the worker's: when the router's serving loop and
#: the worker want the same core, the loop (RankProviders) gets it, and the
#: worker catches up through the router's bounded buffer (backpressure), which
#: slows ingestion instead of ranking. 10 gives the worker ~1/10 of a contended
#: core (Linux CFS weights 1024 and 110); an uncontended core it still has whole.
_NICE = 10

log = logging.getLogger(__name__)


class SketchHost:
    """The worker's state and what each message does to it (no I/O: tested directly)."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.store = InMemoryStatsStore(clock=clock)
        self.series = DashboardSeries(clock)
        self._published: dict[EndpointKey, EndpointStats] = {}

    def handle(self, message: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """Apply one message; the reply to send, if it asks for one."""
        kind = message[0]
        if kind == "record":
            by_endpoint = outcomes_of(message[1])
            self.store.record_grouped(by_endpoint)
            self.series.record_grouped(by_endpoint)
            return None
        if kind == "transition":
            self.series.on_transition(message[1])
            return None
        if kind == "retain":
            keys = message[1]
            self.store.retain(keys)
            self.series.retain(keys)
            self._published = {k: v for k, v in self._published.items() if k in keys}
            return None
        if kind == "points":
            _, request_id, wanted, range_name, min_samples = message
            return ("reply", request_id, self.series.points_many(wanted, range_name, min_samples))
        if kind == "refresh":  # read-your-writes: everything sent so far, published
            self.store.refresh()
            return ("reply", message[1], None)
        if kind == "absorb":  # a replica's checkpoint, at restore
            _, key, exported, last_sample_at, now = message
            self.store.absorb(key, exported, last_sample_at, now)
            return None
        if kind == "export":  # this replica's checkpoint
            _, request_id, now = message
            return ("reply", request_id, self.store.export_now(now))
        raise ValueError(f"unknown message {kind!r}")

    def refresh_steps(self) -> None:
        """The background refresh (``refresh_steps``: its cadence rules keep the hour
        and day merges to once a second), run to the end: nothing waits on this loop."""
        for _ in self.store.refresh_steps():
            pass

    def changed(self) -> tuple[Any, ...] | None:
        """The stats message for every endpoint whose cached stats changed since the
        last one (the store replaces a value when it recomputes it), or None."""
        current = self.store.snapshot(self.store.keys())
        published = self._published
        changed = {k: v for k, v in current.items() if published.get(k) is not v}
        self._published = current
        if not changed:
            return None
        return ("stats", changed)


def serve(sock: socket.socket, min_interval_s: float, max_interval_s: float) -> None:
    """Read, apply, refresh, publish; until the router's end closes."""
    host = SketchHost()
    frames = FrameBuffer()
    monotonic = time.monotonic
    refreshed_at = monotonic()
    pending = False  # outcomes arrived since the last refresh
    while True:
        deadline = refreshed_at + (min_interval_s if pending else max_interval_s)
        readable, _, _ = select.select([sock], [], [], max(0.0, deadline - monotonic()))
        if readable:
            data = sock.recv(_READ)
            if not data:
                return  # the router is gone
            for message in frames.feed(data):
                reply = host.handle(message)
                pending = pending or message[0] == "record"
                if reply is None:
                    continue
                if message[0] == "refresh":  # its stats go out before its reply
                    _publish(sock, host)
                    pending, refreshed_at = False, monotonic()
                send_blocking(sock, reply)
        if monotonic() >= deadline:
            host.refresh_steps()
            _publish(sock, host)
            pending, refreshed_at = False, monotonic()


def _publish(sock: socket.socket, host: SketchHost) -> None:
    update = host.changed()
    if update is not None:
        send_blocking(sock, update)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router_service.sketch_worker")
    parser.add_argument("--fd", type=int, required=True, help="the router's socketpair end")
    parser.add_argument("--min-interval", type=float, default=0.1)
    parser.add_argument("--max-interval", type=float, default=0.5)
    args = parser.parse_args(argv)
    if not (math.isfinite(args.min_interval) and 0 < args.min_interval <= args.max_interval):
        parser.error("need 0 < --min-interval <= --max-interval")
    # The router stops its worker by closing the socket; a terminal's Ctrl-C reaches
    # the whole process group, and the router handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(_NICE)
    configure_logging()
    sock = socket.socket(fileno=args.fd)
    gc.collect()
    gc.freeze()  # as the router does: the imported modules are never garbage
    try:
        serve(sock, args.min_interval, args.max_interval)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the router went away mid-write
    except Exception:
        # The router sees the socket close and keeps its sketches in process.
        log.exception("sketch worker failed")
        return 1
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
