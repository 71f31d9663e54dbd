"""Watches the router over gRPC: health (for detection) and per-endpoint metrics (for the view).

Detection is measured on what the router *says* (``GetHealth``), polled every
0.25 s, not on anything the demo infers, because the point of the demo is to
show the router noticing. The metrics (``GetModelEndpoints``) are polled once a
second; they are only displayed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc

from router_common.pb import router_pb2, router_pb2_grpc
from router_demo.incidents import HealthSample


def state_name(value: int) -> str:
    """``HEALTH_STATE_EJECTED`` → ``ejected``."""
    try:
        name = router_pb2.HealthState.Name(value)
    except ValueError:
        return "unknown"
    return name.removeprefix("HEALTH_STATE_").lower()


@dataclass(slots=True)
class Transition:
    """A health change the demo saw (for the event log)."""

    t: float
    model: str
    provider: str
    from_state: str
    to_state: str
    reason: str


@dataclass
class HealthMonitor:
    """Polls the router; keeps the health timeline, current metrics and transitions."""

    grpc_address: str
    models: Sequence[str]
    clock: Callable[[], float]
    health_interval_s: float = 0.25
    metrics_interval_s: float = 1.0
    samples: list[HealthSample] = field(default_factory=list)
    current: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    endpoints: dict[str, router_pb2.GetModelEndpointsResponse] = field(default_factory=dict)
    transitions: deque[Transition] = field(default_factory=lambda: deque(maxlen=200))
    errors: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        wanted = set(self.models)
        async with grpc.aio.insecure_channel(self.grpc_address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            next_metrics = 0.0
            while not stop.is_set():
                try:
                    resp = await stub.GetHealth(router_pb2.GetHealthRequest(), timeout=2.0)
                    self._record_health(resp, wanted)
                    if self.clock() >= next_metrics:
                        next_metrics = self.clock() + self.metrics_interval_s
                        for model in self.models:
                            self.endpoints[model] = await stub.GetModelEndpoints(
                                router_pb2.GetModelEndpointsRequest(model=model), timeout=2.0
                            )
                except grpc.aio.AioRpcError:
                    self.errors += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.health_interval_s)

    def _record_health(self, resp: router_pb2.GetHealthResponse, wanted: set[str]) -> None:
        now = self.clock()
        states: dict[tuple[str, str], str] = {}
        for ep in resp.endpoints:
            if ep.model not in wanted:
                continue
            key = (ep.model, ep.provider)
            name = state_name(ep.state)
            states[key] = name
            before = self.current.get(key)
            if before is not None and before[0] != name:
                self.transitions.append(
                    Transition(now, ep.model, ep.provider, before[0], name, ep.reason)
                )
            self.current[key] = (name, ep.reason)
        self.samples.append((now, states))
