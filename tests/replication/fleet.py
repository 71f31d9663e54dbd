"""Real parts for replication tests and the benchmark: redis-server and router processes.

A ``RedisServer`` is Debian's redis-server on a free loopback port with a temp
dir (no persistence unless asked); a ``RouterProcess`` is ``router-service``
run as a child process with its JSON log in a file, so a test can kill -9 it,
restart it and read what it logged.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router_common.pb import router_pb2, router_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CATALOG = REPO_ROOT / "router_common" / "examples" / "catalog.yaml"
MODEL = "zai/glm-4.7"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server is not installed: run scripts/setup --redis")
    return found


class RedisServer:
    """redis-server on 127.0.0.1; ``kill`` and ``start`` again keep the same port."""

    def __init__(self, workdir: Path, password: str | None = None, tls: Path | None = None) -> None:
        """``tls``: a directory holding ``ca.pem``, ``cert.pem`` and ``key.pem``; Redis
        then listens with TLS only (``rediss://``), checking no client certificate."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls / 'ca.pem'}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.workdir / "redis.log"),
            "--enable-debug-command", "local",  # DEBUG SLEEP: a slow Redis, on demand
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            args[args.index("--port") + 1] = "0"
            args += ["--tls-port", str(self.port), "--tls-auth-clients", "no"]
            args += ["--tls-cert-file", str(self.tls / "cert.pem")]
            args += ["--tls-key-file", str(self.tls / "key.pem")]
            args += ["--tls-ca-cert-file", str(self.tls / "ca.pem")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.client().ping():
                    return
            except redis.exceptions.RedisError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=2,
            ssl=self.tls is not None,
            ssl_ca_certs=str(self.tls / "ca.pem") if self.tls else None,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


class RouterProcess:
    """``router-service --redis ...`` as a child process."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        redis_url: str | None,
        *extra: str,
        catalog: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.name = name
        self.redis_url = redis_url
        self.extra = extra
        self.catalog = catalog or EXAMPLE_CATALOG
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"{name}.log"
        self.grpc_address = ""
        self.http_url = ""
        self.started_at = 0.0

    def start(self, env: dict[str, str] | None = None) -> None:
        args = [sys.executable, "-m", "router_service.cli", "--config", str(self.catalog)]
        args += ["--grpc-port", "0", "--http-port", "0", "--host", "127.0.0.1", *self.extra]
        if self.redis_url:
            args += ["--redis", self.redis_url]
        self.log = open(self.log_path, "a")  # noqa: SIM115 - closed in stop
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=self.log, env={**os.environ, **(env or {})}
        )

    def wait_started(self, timeout: float = 30.0) -> dict:
        """Wait for the 'router started' line (logged once SERVING); returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.records():
                if record.get("message") == "router started":
                    self.grpc_address = record["grpc"]
                    self.http_url = record["http"]
                    return record
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}")
            time.sleep(0.02)
        raise AssertionError(f"{self.name} did not start within {timeout}s")

    def records(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._reset()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reset()

    def _reset(self) -> None:
        self.proc = None
        # The log of a previous life must not answer wait_started for the next one.
        if self.log_path.exists():
            self.log_path.rename(self.log_path.with_suffix(f".{time.monotonic_ns()}.log"))
        self.grpc_address = self.http_url = ""

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.grpc_address)

    def serving(self) -> bool:
        with self.channel() as ch:
            stub: Any = health_pb2_grpc.HealthStub(ch)  # the stubs' types lack Check
            reply = stub.Check(health_pb2.HealthCheckRequest(service="router.v1.Router"), timeout=5)
            return reply.status == health_pb2.HealthCheckResponse.SERVING


def outcome(
    provider: str, *, ok: bool = True, ttft: float = 300.0, model: str = MODEL
) -> router_pb2.Outcome:
    if ok:
        return router_pb2.Outcome(
            model=model,
            provider=provider,
            success=True,
            error_class=router_pb2.ERROR_CLASS_NONE,
            http_status=200,
            ttft_ms=ttft,
            tokens_per_second=100.0,
            output_tokens=50,
            duration_ms=800.0,
        )
    return router_pb2.Outcome(
        model=model,
        provider=provider,
        success=False,
        error_class=router_pb2.ERROR_CLASS_SERVER_ERROR,
        http_status=503,
        duration_ms=20.0,
    )


def send(router: RouterProcess, outcomes: list[router_pb2.Outcome]) -> router_pb2.OutcomeAck:
    with router.channel() as ch:
        return router_pb2_grpc.RouterStub(ch).RecordOutcome(
            router_pb2.RecordOutcomeRequest(outcomes=outcomes), timeout=10
        )


def health_states(router: RouterProcess, model: str = MODEL) -> dict[str, int]:
    with router.channel() as ch:
        reply = router_pb2_grpc.RouterStub(ch).GetHealth(
            router_pb2.GetHealthRequest(model=model), timeout=10
        )
    return {e.provider: e.state for e in reply.endpoints}


def rank_order(router: RouterProcess, model: str = MODEL) -> list[str]:
    """The TTFT order, from a ranking that did not explore: stale endpoints get a
    random exploration pick in a share of rankings (issue 16), which two replicas
    holding the same state draw independently."""
    with router.channel() as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        for _ in range(50):
            reply = stub.RankProviders(
                router_pb2.RankProvidersRequest(
                    model=model,
                    preferences=router_pb2.RoutingPreferences(sort=router_pb2.SORT_BY_TTFT),
                ),
                timeout=10,
            )
            if not any(e.exploration for e in reply.endpoints):
                return [e.provider.name for e in reply.endpoints]
    raise AssertionError("50 rankings in a row explored")


def endpoint_figures(router: RouterProcess, model: str = MODEL) -> dict[str, dict]:
    """provider -> the /v1/models/.../endpoints row (HTTP API)."""
    import urllib.request

    with urllib.request.urlopen(f"{router.http_url}/v1/models/{model}/endpoints", timeout=10) as r:
        doc = json.load(r)
    return {row["provider_name"]: row for row in doc["data"]["endpoints"]}


def metrics_text(router: RouterProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{router.http_url}/metrics", timeout=10) as r:
        return r.read().decode()
