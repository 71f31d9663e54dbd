"""Flags of the console scripts at their bounds, run as real processes: a bad
value is one line on stderr and status 2, never a traceback (exit 1)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / script), *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # OverflowError from bind() and ValueError from logging: tracebacks, exit 1.
        (["--port", "70000"], "argument --port: expected a port 0..65535, got 70000"),
        (["--port", "x"], 'argument --port: expected a port 0..65535, got "x"'),
        (["--log-level", "loud"], "argument --log-level: invalid choice: 'LOUD'"),
        # Started without a word.
        (["--ttft-ms", "nan"], 'argument --ttft-ms: expected a finite number, got "nan"'),
        (["--tps", "inf"], 'argument --tps: expected a finite number, got "inf"'),
    ],
)
def test_fake_provider_refuses_a_bad_flag_with_exit_2(args: list[str], message: str) -> None:
    proc = _run("fake-provider", "--port", "0", *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(f"fake-provider: error: {message}")


def test_fake_provider_on_a_taken_port_exits_2_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run("fake-provider", "--port", str(port))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"fake-provider: cannot listen on 127.0.0.1:{port}: ")
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


def test_fake_provider_takes_a_log_level_in_any_case() -> None:
    from fake_provider.cli import build_parser

    assert build_parser().parse_args(["--log-level", "debug"]).log_level == "DEBUG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # --rps nan passed "<= 0": the demo spun, sent nothing and ignored SIGTERM.
        (["--rps", "nan"], '--rps must be a finite number, got "NaN"'),
        (["--duration", "inf"], '--duration must be a finite number, got "Infinity"'),
        (["--slowdown-factor", "nan"], '--slowdown-factor must be a finite number, got "NaN"'),
        (["--slowdown-factor", "0"], "--slowdown-factor must be positive"),
        (["--max-tokens", "0"], "--max-tokens must be at least 1"),
    ],
)
def test_router_demo_refuses_a_bad_flag_before_starting(args: list[str], message: str) -> None:
    proc = _run("router-demo", "--no-live", *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == f"router-demo: error: {message}"


@pytest.mark.parametrize(
    "flag", ["--rank-timeout-s", "--outcome-send-timeout-s", "--request-deadline-s"]
)
def test_sidecar_refuses_a_duration_over_a_day(flag: str) -> None:
    # --rank-timeout-s 1e300 started, and every RankProviders call then failed at once
    # with DEADLINE_EXCEEDED (the deadline overflowed into the past).
    proc = _run("router-sidecar", flag, "1e300")
    assert (proc.returncode, proc.stderr) == (
        2,
        f"router-sidecar: {flag} must be at most 86400 seconds, got 1e+300\n",
    )
    from sidecar.config import settings_from_args

    assert getattr(settings_from_args([flag, "86400"], {}), flag[2:].replace("-", "_")) == 86400
