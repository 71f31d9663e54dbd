"""``router-service`` and ``router-sidecar`` as real processes: one per port, file limits,
idle connections, protected mode."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router_common.pb import router_pb2, router_pb2_grpc


def _spawn(module: str, *args: str, nofile: int | None = None) -> subprocess.Popen:
    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ROUTER_HOST": "127.0.0.1"},
        preexec_fn=limit,
    )


def _lines_until(proc: subprocess.Popen, message: str, timeout: float = 20.0) -> list[dict]:
    """JSON log lines up to and including the first whose message is ``message``."""
    deadline = time.monotonic() + timeout
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:
        record = json.loads(line)
        seen.append(record)
        if record["message"] == message:
            return seen
        assert time.monotonic() < deadline, f"no {message!r} in time"
    raise AssertionError(f"exited early with {proc.wait()}: {seen}")


def _router(catalog: Path, *args: str, nofile: int | None = None):
    proc = _spawn(
        "router_service.cli",
        "--config",
        str(catalog),
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        *args,
        nofile=nofile,
    )
    lines = _lines_until(proc, "router started")
    return proc, lines, lines[-1]


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("which", ["grpc", "http"])
def test_a_taken_port_exits_2_with_one_line_naming_port_and_flag(
    example_catalog: Path, which: str
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        args = ["--config", str(example_catalog), "--grpc-port", "0", "--http-port", "0"]
        args[args.index(f"--{which}-port") + 1] = str(port)
        proc = _spawn("router_service.cli", *args)
        _, stderr = proc.communicate(timeout=30)
    finally:
        holder.close()
    assert proc.returncode == 2
    plain = [line for line in stderr.splitlines() if not line.startswith("{")]
    name = "gRPC" if which == "grpc" else "HTTP"
    assert plain == [
        f"router-service: {name} port {port} on 127.0.0.1 is already in use; "
        f"set another with --{which}-port"
    ]
    assert "Traceback" not in stderr


def test_a_second_router_on_the_same_port_exits_2(example_catalog: Path) -> None:
    first, _, started = _router(example_catalog)
    try:
        port = started["grpc"].rpartition(":")[2]
        second = _spawn(
            "router_service.cli",
            "--config",
            str(example_catalog),
            "--grpc-port",
            port,
            "--http-port",
            "0",
        )
        _, stderr = second.communicate(timeout=30)
        assert second.returncode == 2
        assert f"gRPC port {port} on 127.0.0.1 is already in use" in stderr
    finally:
        _stop(first)


def test_sidecar_taken_listen_port_exits_2_naming_it() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        proc = _spawn("sidecar.cli", "--listen", f"127.0.0.1:{port}", "--router", "127.0.0.1:9")
        _, stderr = proc.communicate(timeout=30)
    finally:
        holder.close()
    assert proc.returncode == 2
    assert (
        f"router-sidecar: listen port {port} on 127.0.0.1 is already in use; "
        "set another with --listen"
    ) in stderr.splitlines()
    # And nothing else went wrong: the upstream session and the router channel the
    # failed start had opened are closed (an audit found "Unclosed client session").
    errors = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert [e["message"] for e in errors if e["level"] == "ERROR"] == ["cannot listen"]


def test_protected_mode_listens_on_loopback_and_says_so(example_catalog: Path) -> None:
    proc = _spawn(
        "router_service.cli",
        "--config",
        str(example_catalog),
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        "--host",
        "0.0.0.0",
    )
    try:
        lines = _lines_until(proc, "router started")
        assert lines[-1]["grpc"].startswith("127.0.0.1:")
        assert any(line["message"].startswith("protected mode") for line in lines)
    finally:
        _stop(proc)


def test_1000_idle_connections_do_not_lock_out_probes_or_ranking(
    example_catalog: Path,
) -> None:
    """A router limited to 1024 files keeps answering health and RankProviders."""
    proc, lines, started = _router(
        example_catalog,
        "--grpc-handshake-timeout-s",
        "1",
        "--http-idle-timeout-s",
        "1",
        nofile=1024,
    )
    limit = next(line for line in lines if line["message"] == "file descriptor limit")
    assert (limit["soft"], limit["hard"]) == (1024, 1024)
    grpc_port = int(started["grpc"].rpartition(":")[2])
    http_port = int(started["http"].rpartition(":")[2])
    idle = []
    try:
        for i in range(1000):
            sock = socket.socket()
            sock.setblocking(True)
            sock.connect(("127.0.0.1", grpc_port if i % 2 else http_port))
            idle.append(sock)
        deadline = time.monotonic() + 30
        answered = False
        while time.monotonic() < deadline and not answered:
            try:
                with grpc.insecure_channel(started["grpc"]) as channel:
                    health = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=2
                    )
                    ranked = router_pb2_grpc.RouterStub(channel).RankProviders(
                        router_pb2.RankProvidersRequest(model="zai/glm-4.7"), timeout=2
                    )
                import urllib.request

                with urllib.request.urlopen(
                    f"http://127.0.0.1:{http_port}/healthz", timeout=2
                ) as resp:
                    http_ok = resp.status == 200
                answered = (
                    health.status == health_pb2.HealthCheckResponse.SERVING
                    and len(ranked.endpoints) > 0
                    and http_ok
                )
            except (grpc.RpcError, OSError):
                time.sleep(0.2)
        assert answered, "router locked out by idle connections"
        assert proc.poll() is None
    finally:
        for sock in idle:
            sock.close()
        _stop(proc)
    assert proc.stderr is not None
    rest = proc.stderr.read().splitlines()
    assert len(rest) < 200, f"{len(rest)} log lines while connections were idle"
    assert not any("Traceback" in line for line in rest)


def test_the_startup_heap_is_frozen_so_full_collections_skip_it(example_catalog: Path) -> None:
    """router-service freezes what it allocated to start (modules, grpc, the catalog), so
    the collector's full passes walk only later objects (router_service/gc_pauses.py)."""
    proc, _, _ = _router(example_catalog)
    try:
        frozen = _lines_until(proc, "startup heap frozen for the garbage collector")[-1]
        assert frozen["objects"] > 10_000
    finally:
        _stop(proc)
