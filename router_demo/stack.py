"""Starts the demo's processes: one fake per catalog provider, the router, one sidecar.

Provider profiles are chosen so that each preference has a clear winner and the
incidents change something visible: cerebras has the fastest first token (the
slowdown target: TTFT-sorted traffic must move off it), deepinfra is the
cheapest host of every model (the failure target: cost-sorted and manually
ordered traffic must move off it), throughput ranks differently from TTFT, and
the ZDR flags come from the catalog, so ZDR requests see only a subset.

API keys: every provider's ``api_key_env`` gets a random value, given to the
sidecar (which sends it) and to that provider's fake (which checks it with
``--api-key-env``), so authentication is exercised end to end. Keys are never
printed or logged.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from router_demo import catalog as cat
from router_demo.processes import (
    Child,
    StartupError,
    Supervisor,
    free_ports,
    http_probe,
    port_in_use,
)

#: provider → (median TTFT ms, tokens/s). Unknown providers cycle through FALLBACK_PROFILES.
PROFILES: dict[str, tuple[float, float]] = {
    "cerebras": (80.0, 1200.0),
    "groq": (110.0, 700.0),
    "fireworks": (150.0, 350.0),
    "together": (200.0, 220.0),
    "baseten": (250.0, 300.0),
    "deepinfra": (320.0, 120.0),
}

FALLBACK_PROFILES = [(120.0, 400.0), (180.0, 250.0), (240.0, 150.0)]
TTFT_SIGMA = 0.15  # lognormal spread: realistic jitter, far from the 2× degraded threshold
#: The router runs on its default tuning (no --tuning): what the demo shows is what
#: users get.


@dataclass
class Stack:
    """Ports, files and child processes of one demo run."""

    workdir: Path
    base_port: int = 0
    seed: int = 1
    source_catalog: str | None = None
    sidecar_cooldown_s: float = 0.5
    supervisor: Supervisor = field(init=False)
    provider_ports: dict[str, int] = field(default_factory=dict)
    grpc_port: int = 0
    http_port: int = 0
    sidecar_port: int = 0
    catalog: dict = field(default_factory=dict)
    catalog_path: Path | None = None
    children: dict[str, Child] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(self.workdir)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"

    @property
    def sidecar_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def ports(self) -> list[int]:
        return [*self.provider_ports.values(), self.grpc_port, self.http_port, self.sidecar_port]

    def control_urls(self) -> dict[str, str]:
        return {name: f"http://127.0.0.1:{port}" for name, port in self.provider_ports.items()}

    def allocate_ports(self) -> None:
        """Choose every port before anything starts; StartupError naming the port and
        ``--base-port`` when a fixed one is taken, instead of a child's bind traceback."""
        if self.provider_ports:
            return
        providers = [s.name for s in cat.provider_specs(cat.load_source(self.source_catalog))]
        n = len(providers) + 3
        if self.base_port:
            ports = list(range(self.base_port, self.base_port + n))
            for port in ports:
                if port_in_use(port):
                    raise StartupError(
                        f"port {port} is already in use (--base-port {self.base_port} uses "
                        f"ports {ports[0]}-{ports[-1]}); choose another --base-port, or omit "
                        "it for free ports"
                    )
        else:
            ports = free_ports(n)
        self.provider_ports = dict(zip(providers, ports, strict=False))
        self.grpc_port, self.http_port, self.sidecar_port = ports[len(providers) :]

    async def start(self) -> None:
        """Start everything and wait until each piece answers; StartupError if not."""
        source = cat.load_source(self.source_catalog)
        specs = cat.provider_specs(source)
        self.allocate_ports()
        self.catalog = cat.derive_catalog(source, self.provider_ports)
        self.catalog_path = cat.write_catalog(self.catalog, self.workdir)
        keys = {s.api_key_env: secrets.token_urlsafe(18) for s in specs if s.api_key_env}
        # Real keys that happen to be in the caller's environment never reach a child.
        base_env = {k: v for k, v in os.environ.items() if k not in keys}
        base_env["PYTHONUNBUFFERED"] = "1"

        sup = self.supervisor
        for i, spec in enumerate(specs):
            ttft, tps = PROFILES.get(spec.name, FALLBACK_PROFILES[i % len(FALLBACK_PROFILES)])
            args = [
                "--port", str(self.provider_ports[spec.name]),
                "--name", spec.name,
                "--ttft-ms", str(ttft),
                "--ttft-sigma", str(TTFT_SIGMA),
                "--tps", str(tps),
                "--seed", str(self.seed + i),
                "--log-level", "WARNING",
            ]  # fmt: skip
            env = dict(base_env)
            if spec.api_key_env:  # each fake knows only its own key
                args += ["--api-key-env", spec.api_key_env]
                env[spec.api_key_env] = keys[spec.api_key_env]
            name = f"fake-{spec.name}"
            self.children[spec.name] = sup.start(name, "fake_provider.cli", args, env)
        router_args = [
            "--config", str(self.catalog_path),
            "--host", "127.0.0.1",
            "--grpc-port", str(self.grpc_port),
            "--http-port", str(self.http_port),
            "--log-level", "warning",
        ]  # fmt: skip
        # The router never sees keys.
        self.children["router"] = sup.start("router", "router_service.cli", router_args, base_env)
        async with aiohttp.ClientSession() as session:
            waits = [
                sup.wait_ready(
                    self.children[s.name],
                    http_probe(session, f"http://127.0.0.1:{self.provider_ports[s.name]}/healthz"),
                )
                for s in specs
            ]
            waits.append(
                sup.wait_ready(
                    self.children["router"],
                    http_probe(session, f"http://127.0.0.1:{self.http_port}/metrics"),
                    timeout_s=30.0,
                )
            )
            await asyncio.gather(*waits)
            # The sidecar gets every key (it calls the providers); the router none.
            self.children["sidecar"] = sup.start(
                "sidecar",
                "sidecar.cli",
                [
                    "--router",
                    self.grpc_address,
                    "--listen",
                    f"127.0.0.1:{self.sidecar_port}",
                    "--fallback-catalog",
                    str(self.catalog_path),
                    "--cooldown-s",
                    str(self.sidecar_cooldown_s),
                    "--log-level",
                    "WARNING",
                ],
                {**base_env, **keys},
            )
            await sup.wait_ready(
                self.children["sidecar"], self._sidecar_ready(session), timeout_s=30.0
            )

    def _sidecar_ready(self, session: aiohttp.ClientSession) -> Callable[[], Awaitable[bool]]:
        url = f"{self.sidecar_url}/readyz"

        async def probe() -> bool:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                body = await resp.json(content_type=None)
                return resp.status == 200 and bool(body.get("router_reachable"))

        return probe

    def stop(self) -> None:
        self.supervisor.stop_all()
