"""Traffic through the sidecar, with the routing preferences real callers send.

Open loop (Poisson arrivals at ``rps``): requests are sent on schedule whether
or not earlier ones finished, as independent users would, so a slow provider
shows up as latency rather than as a quietly reduced request rate. In-flight
requests are capped so a stuck system cannot exhaust the demo's memory.

Every request streams (so the router learns real TTFT and throughput) and is
recorded as a :class:`RequestRecord`: which provider answered
(``x-router-provider``), how many attempts it took (``x-router-attempts``),
and which provider was *tried first* (``routing.attempts[0]`` in the last
chunk), which is what "routed around" is measured on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

#: Preference label → share of traffic. "pinned" requests name one provider in
#: ``only`` (round robin): callers tied to a host by contract exist, and they
#: are what keeps probing a failed provider until it is healthy again.
MIX: dict[str, float] = {
    "cost": 0.20,
    "ttft": 0.20,
    "tps": 0.12,
    "zdr": 0.12,
    "order": 0.10,
    "balance": 0.18,
    "pinned": 0.08,
}

#: Preference labels whose first provider the router chooses (not pinned by the caller).
ROUTED_LABELS = frozenset(MIX) - {"pinned"}


@dataclass(slots=True)
class RequestRecord:
    """One request through the sidecar, as the app saw it."""

    t: float  # seconds since the demo started, when the request was sent
    model: str
    label: str
    status: int  # HTTP status from the sidecar; 0 = no response
    ok: bool  # 200 and the stream finished without an error event
    provider: str | None  # x-router-provider: who answered
    first_provider: str | None  # routing.attempts[0].provider: who was tried first
    attempts: int  # x-router-attempts
    latency_s: float
    ttft_s: float | None = None
    execution_order: tuple[str, ...] = ()
    pinned_to: str | None = None

    @property
    def fallback(self) -> bool:
        """Answered, but not by the first provider tried."""
        return self.attempts > 1


def preference_body(
    label: str, model_providers: Sequence[str], manual_order: Sequence[str], pinned: str | None
) -> dict[str, Any]:
    """The routing fields for one request, alternating OpenRouter's and Vercel's conventions.

    Both conventions are used on purpose: the sidecar accepts either, and the
    demo should prove that.
    """
    if label == "cost":
        return {"provider": {"sort": "price"}}
    if label == "ttft":
        return {"providerOptions": {"gateway": {"sort": "ttft"}}}
    if label == "tps":
        return {"provider": {"sort": "throughput"}}
    if label == "zdr":
        return {"providerOptions": {"gateway": {"zeroDataRetention": True}}}
    if label == "order":
        order = [p for p in manual_order if p in model_providers] or list(model_providers[:2])
        return {"providerOptions": {"gateway": {"order": order}}}
    if label == "pinned":
        return {"provider": {"only": [pinned or model_providers[0]]}}
    return {}


@dataclass
class TrafficGenerator:
    """Sends requests to the sidecar and keeps every record (in memory; a demo is short)."""

    sidecar_url: str
    models: Mapping[str, Sequence[str]]  # model → its providers
    model_weights: Mapping[str, float]
    rps: float
    clock: Callable[[], float]  # seconds since the demo started
    manual_order: Sequence[str] = ("deepinfra", "together")
    max_tokens: int = 16
    seed: int = 1
    max_in_flight: int = 200
    timeout_s: float = 30.0
    records: list[RequestRecord] = field(default_factory=list)
    skipped: int = 0  # arrivals dropped because max_in_flight was reached
    in_flight: int = 0
    _pin_counter: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Send until ``stop`` is set, then wait (briefly) for in-flight requests."""
        rng = random.Random(self.seed)
        labels, label_w = list(MIX), list(MIX.values())
        models, model_w = list(self.model_weights), list(self.model_weights.values())
        tasks: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.max_in_flight)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            next_at = time.monotonic()
            while not stop.is_set():
                next_at += rng.expovariate(self.rps)
                delay = next_at - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        break
                if self.in_flight >= self.max_in_flight:
                    self.skipped += 1
                    continue
                model = rng.choices(models, model_w)[0]
                label = rng.choices(labels, label_w)[0]
                task = asyncio.create_task(self._one(session, model, label))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                _done, pending = await asyncio.wait(tasks, timeout=5.0)
                for task in pending:
                    task.cancel()

    async def _one(self, session: aiohttp.ClientSession, model: str, label: str) -> None:
        providers = self.models[model]
        pinned = None
        if label == "pinned":
            pinned = providers[self._pin_counter % len(providers)]
            self._pin_counter += 1
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": f"demo request ({label})"}],
            "max_tokens": self.max_tokens,
            "stream": True,
            **preference_body(label, providers, self.manual_order, pinned),
        }
        t = self.clock()
        started = time.monotonic()
        rec = RequestRecord(
            t=t,
            model=model,
            label=label,
            status=0,
            ok=False,
            provider=None,
            first_provider=None,
            attempts=0,
            latency_s=0.0,
            pinned_to=pinned,
        )
        self.in_flight += 1
        try:
            async with session.post(f"{self.sidecar_url}/v1/chat/completions", json=body) as resp:
                rec.status = resp.status
                rec.provider = resp.headers.get("x-router-provider")
                with contextlib.suppress(ValueError):
                    rec.attempts = int(resp.headers.get("x-router-attempts", "0"))
                if resp.content_type == "text/event-stream":
                    await self._read_stream(resp, rec, started)
                else:
                    data = await resp.json(content_type=None)
                    routing = data.get("routing") if isinstance(data, dict) else None
                    self._apply_routing(rec, routing)
                    rec.ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
            rec.ok = False
        finally:
            self.in_flight -= 1
            rec.latency_s = time.monotonic() - started
            self.records.append(rec)

    async def _read_stream(
        self, resp: aiohttp.ClientResponse, rec: RequestRecord, started: float
    ) -> None:
        """Read SSE lines; note TTFT, the routing object and whether the stream ended well."""
        finished = errored = False
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                finished = True
                continue
            if rec.ttft_s is None and b'"content"' in payload:
                rec.ttft_s = time.monotonic() - started
            if b'"routing"' in payload or b'"error"' in payload:
                with contextlib.suppress(ValueError):
                    chunk = json.loads(payload)
                    if isinstance(chunk, dict):
                        errored = errored or bool(chunk.get("error"))
                        self._apply_routing(rec, chunk.get("routing"))
        rec.ok = resp.status == 200 and finished and not errored

    @staticmethod
    def _apply_routing(rec: RequestRecord, routing: Any) -> None:
        if not isinstance(routing, dict):
            return
        attempts = routing.get("attempts") or []
        if attempts and isinstance(attempts[0], dict):
            rec.first_provider = attempts[0].get("provider")
            rec.attempts = max(rec.attempts, len(attempts))
        order = routing.get("execution_order")
        if isinstance(order, list):
            rec.execution_order = tuple(str(p) for p in order)
        if rec.provider is None and routing.get("provider"):
            rec.provider = str(routing["provider"])


def share_by_provider(
    records: Sequence[RequestRecord], since: float, model: str | None = None
) -> dict[str, float]:
    """Share of successful answers per provider among requests sent at or after ``since``."""
    counts: dict[str, int] = {}
    total = 0
    # Records are appended when a request ends, so ``t`` is only roughly sorted:
    # scan a bounded tail instead of stopping at the first older record.
    for rec in records[-5000:]:
        if rec.t < since:
            continue
        if not rec.ok or rec.provider is None or (model is not None and rec.model != model):
            continue
        counts[rec.provider] = counts.get(rec.provider, 0) + 1
        total += 1
    return {p: n / total for p, n in counts.items()} if total else {}
