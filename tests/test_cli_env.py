"""Settings read from environment variables, as a Kubernetes manifest sets them.

The console scripts run as real processes. A bad value from a variable must
name the variable (the operator set it in ``env:``, not the flag in ``args:``),
the flag it stands for and the value as JSON, in one line with status 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from router_common.cli_env import parse_bool

BIN = Path(sys.executable).parent
CATALOG = Path(__file__).resolve().parent.parent / "router_common" / "examples" / "catalog.yaml"


def _run(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The console script with only ``env`` on top of a clean environment (no
    ROUTER_*/SIDECAR_* leaking in from the shell that runs the tests)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ROUTER_", "SIDECAR_"))}
    return subprocess.run(
        [str(BIN / script), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("script", "variable", "value", "line"),
    [
        (
            "router-service",
            "ROUTER_REDIS_CHECKPOINT_INTERVAL_S",
            "abc",
            'router-service: ROUTER_REDIS_CHECKPOINT_INTERVAL_S="abc" '
            '(sets --redis-checkpoint-interval): expected seconds, got "abc"',
        ),
        (
            "router-service",
            "ROUTER_LOG_LEVEL",
            "loud",
            'router-service: ROUTER_LOG_LEVEL="loud" (sets --log-level): expected one of '
            '["debug", "info", "warning", "error"], got "loud"',
        ),
        (
            "router-service",
            "ROUTER_ALLOW_UNAUTHENTICATED",
            "maybe",
            'router-service: ROUTER_ALLOW_UNAUTHENTICATED="maybe" (sets --allow-unauthenticated): '
            'expected a boolean (1/true/yes/on/0/false/no/off), got "maybe"',
        ),
        (
            "router-sidecar",
            "SIDECAR_MAX_ATTEMPTS",
            "x",
            'router-sidecar: SIDECAR_MAX_ATTEMPTS="x" (sets --max-attempts): expected an integer',
        ),
        (
            "router-sidecar",
            "SIDECAR_HEDGE",
            "maybe",
            'router-sidecar: SIDECAR_HEDGE="maybe" (sets --hedge): '
            'expected a boolean (1/true/yes/on/0/false/no/off), got "maybe"',
        ),
    ],
)
def test_a_value_the_flag_refuses_names_the_variable_in_one_line(
    script: str, variable: str, value: str, line: str
) -> None:
    # It read "argument --redis-checkpoint-interval: invalid float value: 'abc'"
    # after a 7-line usage block; ROUTER_ALLOW_UNAUTHENTICATED=maybe was silently false.
    proc = (
        _run(script, "--config", str(CATALOG), env={variable: value})
        if (script == "router-service")
        else _run(script, env={variable: value})
    )
    assert (proc.returncode, proc.stderr) == (2, line + "\n")


@pytest.mark.parametrize(
    ("script", "env", "start"),
    [
        (
            "router-service",
            {"ROUTER_HTTP_IDLE_TIMEOUT_S": "0"},
            "router-service: ROUTER_HTTP_IDLE_TIMEOUT_S (sets --http-idle-timeout-s) must be > 0",
        ),
        (
            "router-service",
            {"ROUTER_REDIS_URL": "redis://redis:6379", "ROUTER_REDIS_PREFIX": "a b"},
            "router-service: ROUTER_REDIS_PREFIX (sets --redis-prefix) must be 1..64 characters",
        ),
        (
            "router-service",
            {"ROUTER_REDIS_URL": "redis://redis:6379", "ROUTER_REDIS_CHECKPOINT_INTERVAL_S": "nan"},
            "router-service: ROUTER_REDIS_CHECKPOINT_INTERVAL_S (sets --redis-checkpoint-interval) "
            'must be 0.05..3600 seconds, got "NaN"',
        ),
        (
            "router-sidecar",
            {"SIDECAR_MAX_ATTEMPTS": "0"},
            "router-sidecar: SIDECAR_MAX_ATTEMPTS (sets --max-attempts) must be above 0",
        ),
        (
            "router-sidecar",
            {"SIDECAR_ROUTER": "router-without-port"},
            "router-sidecar: SIDECAR_ROUTER (sets --router): expected HOST:PORT, "
            'got "router-without',
        ),
        (
            "router-sidecar",
            {"SIDECAR_PROVIDER_FIRST_TOKEN_TIMEOUTS": "groq"},
            "router-sidecar: SIDECAR_PROVIDER_FIRST_TOKEN_TIMEOUTS "
            "(sets --provider-first-token-timeouts): ",
        ),
        (
            "router-sidecar",
            {"SIDECAR_LOG_LEVEL": "loud"},
            "router-sidecar: SIDECAR_LOG_LEVEL (sets --log-level) must be one of debug, info, "
            'warning, error, got "loud"',
        ),
    ],
)
def test_a_value_out_of_bounds_names_the_variable(
    script: str, env: dict[str, str], start: str
) -> None:
    # Bounds checked after parsing named only the flag ("--max-attempts must be above 0").
    args = ("--config", str(CATALOG)) if script == "router-service" else ()
    proc = _run(script, *args, env=env)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(start), proc.stderr


def test_the_flag_wins_over_a_bad_variable(tmp_path: Path) -> None:
    """As README and --help say: a flag given on the command line is used and its
    variable is not even read (an operator overriding a broken env: entry)."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    proc = _run(
        "router-service",
        "--config",
        str(empty),
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        env={"ROUTER_GRPC_PORT": "abc", "ROUTER_CONFIG": "/nonexistent.yaml"},
    )
    # It got past the flags to the catalog given by the flag.
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].startswith(f"router-service: {empty}: "), proc.stderr
    proc = _run(
        "router-sidecar",
        "--max-attempts",
        "2",
        "--listen",
        "bogus",
        env={"SIDECAR_MAX_ATTEMPTS": "x", "SIDECAR_LISTEN": "127.0.0.1:0"},
    )
    assert (proc.returncode, proc.stderr) == (
        2,
        'router-sidecar: --listen: expected HOST:PORT, got "bogus"\n',
    )


def test_a_bad_redis_url_from_the_environment_never_prints_the_password() -> None:
    url = "redis://:hunter2/with-slash@redis:6379"
    proc = _run("router-service", "--config", str(CATALOG), env={"ROUTER_REDIS_URL": url})
    assert proc.returncode == 2
    assert "hunter2" not in proc.stderr
    assert proc.stderr.startswith("router-service: ROUTER_REDIS_URL (sets --redis) URL")


@pytest.mark.parametrize("script", ["router-service", "router-sidecar"])
def test_help_never_prints_a_value_from_the_environment(script: str) -> None:
    # --help appended "(default: <ROUTER_HOST>)" and the like: whatever the pod's
    # environment held (a path, an address, a token-file location) was printed.
    marker = "env-value-7f3a"
    env = {
        name: marker
        for name in (
            "ROUTER_HOST",
            "ROUTER_AUTH_TOKENS",
            "ROUTER_TLS_CERT",
            "ROUTER_TLS_KEY",
            "ROUTER_TLS_CLIENT_CA",
            "ROUTER_TUNING",
            "ROUTER_REDIS_PASSWORD_FILE",
            "ROUTER_REDIS_PREFIX",
            "ROUTER_CONFIG",
            "SIDECAR_ROUTER_TOKEN_FILE",
            "SIDECAR_FALLBACK_CATALOG",
        )
    }
    proc = _run(script, "--help", env=env)
    assert proc.returncode == 0, proc.stderr
    assert marker not in proc.stdout


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *[(t, True) for t in ("1", "true", "TRUE", "True", "yes", "YES", "on", "On", " true ")],
        *[(t, False) for t in ("0", "false", "FALSE", "no", "No", "off", "OFF", "")],
    ],
)
def test_every_boolean_variable_reads_the_same_words(
    text: str, value: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ROUTER_ALLOW_UNAUTHENTICATED took 1/true/yes only (on: silently off) while the
    sidecar's booleans also took on/off: one parser now serves both CLIs."""
    from router_service.cli import parse_args
    from sidecar.config import settings_from_args

    assert parse_bool(text) is value
    monkeypatch.setenv("ROUTER_ALLOW_UNAUTHENTICATED", text)
    assert parse_args(["--config", "c.yaml"]).allow_unauthenticated is value
    assert settings_from_args([], {"SIDECAR_HEDGE": text}).hedge is value


def test_an_empty_catalog_path_is_refused_by_name() -> None:
    # It read ": (file): cannot read: Is a directory" (the working directory).
    proc = _run("router-service", env={"ROUTER_CONFIG": ""})
    assert (proc.returncode, proc.stderr) == (
        2,
        'router-service: ROUTER_CONFIG="" (sets --config): expected the catalog\'s path, got ""\n',
    )
    proc = _run("router-service", "--config", "", env={})
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        'router-service: error: argument --config: expected the catalog\'s path, got ""'
    )
