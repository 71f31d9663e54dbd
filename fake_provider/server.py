"""Run a fake provider in-process: ``async with FakeProvider(config) as fp: ...``.

Tests, the demo and the benchmarks start several of these on loopback with
port 0 and read the chosen port back, so parallel runs never collide.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from aiohttp import web

from fake_provider.app import STATE_KEY, Clock, ProviderState, RecordedRequest, build_app
from fake_provider.config import FakeProviderConfig, Incident, IncidentKind


class FakeProvider:
    """A fake OpenAI-compatible provider listening on ``host:port`` (0 = any free port).

    The runner uses ``handler_cancellation=True`` so a handler stops as soon as
    its client disconnects (a hung or long streaming request does not keep
    running), and a short ``shutdown_timeout`` so ``stop()`` is prompt.
    """

    def __init__(
        self,
        config: FakeProviderConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock = time.monotonic,
        shutdown_timeout: float = 1.0,
    ) -> None:
        self.config = config or FakeProviderConfig()
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self.app = build_app(self.config, clock=clock)
        self._runner: web.AppRunner | None = None
        self._shutdown_timeout = shutdown_timeout

    @property
    def state(self) -> ProviderState:
        """The live server state (records, incidents, current config)."""
        return self.app[STATE_KEY]

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeProvider is not started")
        return self._port

    @property
    def root_url(self) -> str:
        """``http://host:port`` (control API lives under ``/_fake/``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return self.root_url + "/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of the recorded chat-completion requests, oldest first."""
        return list(self.state.records)

    def add_incident(
        self,
        incident: Incident | IncidentKind,
        *,
        duration_s: float | None = None,
        start_in_s: float = 0.0,
        status: int = 503,
        factor: float = 3.0,
        after_tokens: int = 0,
    ) -> Incident:
        """Add an incident.

        Given an :class:`Incident`, its ``start_s``/``end_s`` are seconds since
        server start. Given a kind (``"fail"``, ``"slowdown"``, ``"hang"``,
        ``"drop"``, ``"refuse"``), it starts ``start_in_s`` from now and lasts
        ``duration_s`` (None = until cleared).
        """
        if not isinstance(incident, Incident):
            start = self.state.now_s() + start_in_s
            incident = Incident(
                kind=incident,
                start_s=start,
                end_s=None if duration_s is None else start + duration_s,
                status=status,
                factor=factor,
                after_tokens=after_tokens,
            )
        return self.state.add_incident(incident)

    def clear_incidents(self) -> None:
        """Remove every incident, configured ones included."""
        self.state.clear_incidents()

    def reset(self) -> None:
        """Empty the record, restore configured incidents and config, re-seed the RNG."""
        self.state.reset()

    def update_config(self, **changes: Any) -> FakeProviderConfig:
        """Change runtime tunables (ttft_median_ms, tokens_per_second, error_rate, ...)."""
        return self.state.update_config(**changes)

    async def start(self) -> None:
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout,
        )
        # Incident windows count from the moment the server starts listening.
        self.state.t0 = self.state.clock()
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeProvider:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
