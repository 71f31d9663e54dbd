"""`router-service` as a real process: bad config exits 2 naming it; SIGTERM drains and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router_service.cli import parse_args


def _router(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "router_service.cli", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _read_started(proc: subprocess.Popen, timeout: float = 20.0) -> dict:
    """Read JSON log lines until the start line; it carries the bound addresses."""
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    for line in proc.stderr:
        record = json.loads(line)
        if record["message"] == "router started":
            return record
        assert time.monotonic() < deadline, "router did not start in time"
    raise AssertionError(f"router exited early with {proc.wait()}")


def test_bad_catalog_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers:\n  x: {base_url: nope, api_key_env: K}\nmodels: {}\n")
    proc = _router("--config", str(bad), "--grpc-port", "0", "--http-port", "0")
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert f"{bad}: providers.x.base_url: expected an http(s) URL" in stderr


def test_sigterm_drains_and_exits_zero(example_catalog: Path) -> None:
    proc = _router(
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        env={"ROUTER_CONFIG": str(example_catalog), "ROUTER_HOST": "127.0.0.1"},
    )
    try:
        started = _read_started(proc)
        assert started["level"] == "INFO" and started["logger"] == "router_service.app"
        with grpc.insecure_channel(started["grpc"]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="router.v1.Router"), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert '"router stopped"' in rest
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_at_the_start_line_still_drains_and_stops_the_worker(
    example_catalog: Path,
) -> None:
    """A SIGTERM sent the moment "router started" is logged (a supervisor, a test)
    exits 0 through the graceful path, and the sketch worker exits with it."""
    proc = _router(
        "--config", str(example_catalog), "--host", "127.0.0.1", "--grpc-port", "0",
        "--http-port", "0",
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        worker_pid = None
        for line in proc.stderr:
            record = json.loads(line)
            if record["message"] == "sketch worker started":
                worker_pid = record["pid"]
            if record["message"] == "router started":
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert '"router stopped"' in rest
        assert worker_pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(worker_pid, 0)  # exited, and reaped by the router
    finally:
        if proc.poll() is None:
            proc.kill()


def test_flags_fall_back_to_environment(monkeypatch) -> None:
    monkeypatch.setenv("ROUTER_CONFIG", "/etc/router/catalog.yaml")
    monkeypatch.setenv("ROUTER_GRPC_PORT", "6000")
    monkeypatch.setenv("ROUTER_LOG_LEVEL", "debug")
    args = parse_args([])
    assert (args.config, args.grpc_port, args.http_port, args.log_level) == (
        "/etc/router/catalog.yaml",
        6000,
        8081,
        "debug",
    )
    assert parse_args(["--config", "x.yaml", "--grpc-port", "7000"]).grpc_port == 7000


def test_ingest_share_flag_env_and_bounds(monkeypatch, capsys) -> None:
    import pytest

    assert parse_args(["--config", "c.yaml"]).ingest_share == 0.25
    assert parse_args(["--config", "c.yaml", "--ingest-share", "0.7"]).ingest_share == 0.7
    monkeypatch.setenv("ROUTER_INGEST_SHARE", "1")
    assert parse_args(["--config", "c.yaml"]).ingest_share == 1.0
    for bad in ("0", "1.5", "nan", "x"):
        with pytest.raises(SystemExit):
            parse_args(["--config", "c.yaml", "--ingest-share", bad])
        assert "--ingest-share: expected a number in (0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variable", "value", "flag"),
    [
        ("ROUTER_GRPC_PORT", "abc", "--grpc-port"),
        ("ROUTER_HTTP_PORT", "70000", "--http-port"),
        ("ROUTER_INGEST_SHARE", "2", "--ingest-share"),
        ("ROUTER_LOG_LEVEL", "verbose", "--log-level"),
        ("ROUTER_CALLER_OUTCOMES_PER_SECOND", "abc", "--caller-outcomes-per-second"),
        ("ROUTER_CALLER_OUTCOMES_PER_SECOND", "nan", "--caller-outcomes-per-second"),
        ("ROUTER_CALLER_OUTCOME_BURST", "inf", "--caller-outcome-burst"),
        ("ROUTER_STREAM_IDLE_TIMEOUT_S", "x", "--stream-idle-timeout-s"),
    ],
)
def test_a_bad_environment_variable_exits_2_naming_it_and_its_flag(
    example_catalog: Path, variable: str, value: str, flag: str
) -> None:
    # A Kubernetes manifest sets these; a typo must name the variable the operator set
    # (it named only the flag, which is in no manifest), in one line, not a traceback.
    proc = _router("--config", str(example_catalog), env={variable: value})
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2, stderr
    assert stderr.splitlines() == [stderr.strip()], stderr
    assert stderr.startswith(f'router-service: {variable}="{value}" (sets {flag}): '), stderr


def test_a_non_finite_rate_limit_flag_is_refused(capsys) -> None:
    # NaN compared false everywhere and silently switched the per-caller limit off.
    for bad in ("nan", "inf", "-inf"):
        with pytest.raises(SystemExit):
            parse_args(["--config", "c.yaml", f"--caller-outcomes-per-second={bad}"])
        assert "expected a finite number" in capsys.readouterr().err


def test_failed_tls_handshakes_leave_stderr_json_lines(example_catalog: Path, tmp_path) -> None:
    # gRPC core wrote one non-JSON "Handshake failed" INFO line per bad TLS client.
    import socket

    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    flags = ["--config", str(example_catalog), "--host", "127.0.0.1", "--grpc-port", "0"]
    flags += ["--http-port", "0", "--tls-cert", str(cert), "--tls-key", str(key)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "router_service.cli", *flags, "--allow-unauthenticated"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        started = _read_started(proc)
        port = int(started["grpc"].rsplit(":", 1)[1])
        for _ in range(3):  # a plaintext HTTP/2 client, then TLS garbage
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x16\x03\x01\x00\x05hello")
                sock.settimeout(5)
                assert sock.recv(100) == b""  # the router closes the connection
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    for line in rest.splitlines():
        json.loads(line)  # every line of stderr is a JSON log record


def test_an_unusable_tls_file_exits_2_naming_its_flag_and_file(
    example_catalog: Path, tmp_path: Path
) -> None:
    # ssl's own text ("[SSL] PEM lib (_ssl.c:3905)", "[Errno 2] ...") named neither.
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    base = ["--config", str(example_catalog), "--host", "127.0.0.1"]
    base += ["--grpc-port", "0", "--http-port", "0"]
    for flags, named in [
        (["--tls-cert", str(junk), "--tls-key", str(junk)], f"--tls-cert {junk} / --tls-key"),
        (
            ["--tls-cert", str(tmp_path / "gone.crt"), "--tls-key", str(tmp_path / "gone.key")],
            f"--tls-cert {tmp_path / 'gone.crt'}",
        ),
    ]:
        proc = _router(*base, *flags)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 2, stderr
        assert "Traceback" not in stderr
        last = stderr.splitlines()[-1]
        assert last.startswith(f"router-service: {named}"), last


def test_an_encrypted_tls_key_exits_2_naming_it_without_asking_for_a_passphrase(
    example_catalog: Path, tmp_path: Path
) -> None:
    # OpenSSL asked for the passphrase itself: on a terminal the router hung at
    # start; without one (this test: a new session has no controlling terminal)
    # stderr got a plain-text "Enter PEM pass phrase:" and "(Invalid argument)".
    import trustme
    from cryptography.hazmat.primitives import serialization

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    plain = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    key.write_bytes(
        plain.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"a-passphrase"),
        )
    )
    flags = ["--config", str(example_catalog), "--host", "127.0.0.1", "--grpc-port", "0"]
    flags += ["--http-port", "0", "--tls-cert", str(cert), "--tls-key", str(key)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "router_service.cli", *flags],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2, stderr
    assert "pass phrase" not in stderr and "Traceback" not in stderr
    for line in stderr.splitlines()[:-1]:
        json.loads(line)  # every other line is a JSON log record
    last = stderr.splitlines()[-1]
    assert last.startswith(f"router-service: --tls-key {key}: the private key is encrypted"), last


@pytest.mark.parametrize(
    ("flags", "env", "named"),
    [
        # --tls-cert with ROUTER_TLS_KEY= (a missing Secret key): it served plaintext
        # on 0.0.0.0 while its start line said https.
        # Named as the variable and the flag it sets (router_common/cli_env.py).
        (
            ["--tls-cert", "{cert}", "--tls-client-ca", "{ca}"],
            {"ROUTER_TLS_KEY": ""},
            "ROUTER_TLS_KEY (sets --tls-key)",
        ),
        # An empty client CA: no client certificate was asked for, silently.
        (
            ["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", ""],
            {},
            "--tls-client-ca",
        ),
    ],
)
def test_an_empty_tls_flag_exits_2_naming_it(
    example_catalog: Path, tmp_path: Path, flags: list[str], env: dict[str, str], named: str
) -> None:
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    files = {"cert": tmp_path / "s.crt", "key": tmp_path / "s.key", "ca": tmp_path / "ca.pem"}
    leaf.cert_chain_pems[0].write_to_path(str(files["cert"]))
    leaf.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    base = ["--config", str(example_catalog), "--host", "0.0.0.0", "--grpc-port", "0"]
    base += ["--http-port", "0"]
    proc = _router(*base, *(f.format(**files) for f in flags), env=env)
    try:
        _, stderr = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"the router started despite an empty {named}") from None
    assert proc.returncode == 2, stderr
    assert stderr.splitlines()[-1].startswith(f"router-service: {named} is empty"), stderr
    assert stderr.splitlines()[-1].count("ROUTER_TLS_KEY") <= 1, stderr  # named once


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--grpc-handshake-timeout-s", "1e7"),  # gRPC takes ms as a C int: OverflowError
        ("--stream-idle-timeout-s", "1e300"),
        ("--http-idle-timeout-s", "-1"),
        ("--caller-outcome-burst", "10"),  # the message named outcome_burst, not the flag
        ("--caller-outcomes-per-second", "-5"),
    ],
)
def test_an_out_of_range_limit_flag_exits_2_naming_it(
    example_catalog: Path, flag: str, value: str
) -> None:
    proc = _router("--config", str(example_catalog), f"{flag}={value}")
    try:
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # it started instead of refusing the flag
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1].startswith(f"router-service: {flag} must be "), stderr


def test_a_tls_server_name_that_is_not_ascii_leaves_one_json_line(
    example_catalog: Path, tmp_path: Path
) -> None:
    # The HTTP side's SNI callback (it switches each handshake to the current
    # certificates) makes Python decode the server name as ASCII; one that is not
    # was printed as a plain-text "Exception ignored in" traceback per handshake.
    import socket
    import ssl

    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    flags = ["--config", str(example_catalog), "--host", "127.0.0.1", "--grpc-port", "0"]
    flags += ["--http-port", "0", "--tls-cert", str(cert), "--tls-key", str(key)]
    proc = _router(*flags, "--allow-unauthenticated")
    # A real ClientHello for "aaaaa.example", its name's first bytes made UTF-8 "é".
    outgoing = ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(
        ssl.MemoryBIO(), outgoing, server_hostname="aaaaa.example"
    )
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read().replace(b"aaaaa.example", "éaaa.example".encode())
    try:
        started = _read_started(proc)
        port = int(started["http"].rsplit(":", 1)[1])
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(hello)
                sock.settimeout(5)
                sock.recv(100)  # an alert, then the router closes
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    records = [json.loads(line) for line in rest.splitlines()]  # every line is JSON
    assert len([r for r in records if r.get("level") == "WARNING"]) <= 1, records
