"""--redis flags, secrets kept out of logs, and the pieces a checkpoint is made of."""

from __future__ import annotations

import random

import pytest

from router_common.domain import EndpointKey, ErrorClass
from router_service.cli import main, parse_args
from router_service.health import HealthConfig, HealthTracker
from router_service.model import Outcome
from router_service.replication.cli_args import replication_config
from router_service.replication.codec import decode_outcomes, encode_outcomes
from router_service.replication.config import RedisSettingsError, ReplicationConfig, redact
from router_service.sketches.windows import EndpointWindows
from tests.conftest import EXAMPLE_CATALOG, FakeClock
from tests.replication.fleet import RedisServer, RouterProcess, endpoint_figures, outcome, send
from tests.replication.test_convergence import wait_until

KEY = EndpointKey("zai/glm-4.7", "cerebras")


def config_from(*argv: str):
    return replication_config(parse_args(["--config", str(EXAMPLE_CATALOG), *argv]))


def test_no_redis_flag_means_single_process_mode() -> None:
    assert config_from() is None


def test_url_password_file_and_prefix_from_flags_and_env(tmp_path, monkeypatch) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    cfg = config_from(
        "--redis", "rediss://redis.example:6380/2", "--redis-password-file", str(secret)
    )
    assert cfg is not None and cfg.password == "s3cret" and cfg.prefix == "llm-router"
    monkeypatch.setenv("ROUTER_REDIS_URL", "redis://10.0.0.1")
    monkeypatch.setenv("ROUTER_REDIS_PREFIX", "team-a")
    cfg = config_from()
    assert cfg is not None and (cfg.url, cfg.prefix) == ("redis://10.0.0.1", "team-a")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--redis", "http://redis:6379"],
            "must start with redis:// or rediss://, got scheme 'http'",
        ),
        (["--redis", "redis://"], "has no host"),
        (["--redis", "redis://h:99999"], "is malformed"),
        (["--redis", "redis://h/abc"], "must be a database number, got 'abc'"),
        (["--redis", "redis://:pw@h", "--redis-password-file", "/etc/hostname"], "not both"),
        (["--redis", "redis://h", "--redis-password-file", "/nonexistent/pw"], "cannot be read"),
        (["--redis-password-file", "/etc/hostname"], "needs --redis"),
        (["--redis", "redis://h", "--redis-prefix", "a b"], "--redis-prefix must be"),
        (
            ["--redis", "redis://h", "--redis-checkpoint-interval", "0"],
            "--redis-checkpoint-interval",
        ),
    ],
)
def test_bad_redis_settings_are_named(argv: list[str], message: str) -> None:
    with pytest.raises(RedisSettingsError, match=message.replace("(", r"\(").replace("?", r"\?")):
        config_from(*argv)


def test_bad_redis_url_exits_2_without_leaking_the_password(capsys) -> None:
    code = main(["--config", str(EXAMPLE_CATALOG), "--redis", "http://user:hunter2@h:1"])
    err = capsys.readouterr().err
    assert code == 2 and "scheme 'http'" in err and "hunter2" not in err
    assert redact("rediss://u:hunter2@h:6380/1") == "rediss://h:6380/1"
    assert redact("redis://h:6379/0?password=hunter2") == "redis://h:6379/0"  # redis-py reads it


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2/x@127.0.0.1:6379/0",  # "/": was quoted as the port
        "redis://u:hun#ter2@127.0.0.1:6379/0",  # "#": the URL was cut inside the password
        "redis://u:hunter2?@127.0.0.1:6379/0",
        "redis://u:12/hunter2@127.0.0.1:6379/0",  # was quoted as the database
    ],
)
def test_a_password_with_url_delimiters_exits_2_without_leaking_it(url: str, capsys) -> None:
    code = main(["--config", str(EXAMPLE_CATALOG), "--redis", url])
    err = capsys.readouterr().err
    assert code == 2 and "--redis-password-file" in err, err
    assert "hunter" not in err and "ter2" not in err, err
    assert redact(url) == "redis://127.0.0.1:6379/0"


def test_a_password_file_with_a_byte_order_mark_gives_the_password_without_it(tmp_path) -> None:
    # Windows editors write a BOM; it became the password's first character, so
    # Redis refused every connection (WRONGPASS) and the replica ran unshared.
    secret = tmp_path / "password"
    secret.write_bytes(b"\xef\xbb\xbfpw-0123456789\r\n")
    cfg = config_from("--redis", "redis://h", "--redis-password-file", str(secret))
    assert cfg is not None and cfg.password == "pw-0123456789"


def test_the_router_settings_repr_holds_no_redis_password(tmp_path) -> None:
    # Found by a secrets audit: the dataclass repr of ReplicationConfig, and so of
    # the router's Settings (what a traceback with locals or a debugger prints),
    # held the URL's password and the password file's contents.
    from router_service.app import Settings

    secret = tmp_path / "password"
    secret.write_text("file-pw-0123456789\n")
    for argv in (
        ("--redis", "redis://:url-pw-0123456789@h:6379/0"),
        ("--redis", "redis://h:6379/0", "--redis-password-file", str(secret)),
    ):
        cfg = config_from(*argv)
        shown = repr(Settings(config_path="c.yaml", replication=cfg))
        assert "pw-0123456789" not in shown
        assert "redis://h:6379/0" in shown


def test_outcome_codec_round_trips() -> None:
    items = [
        Outcome(KEY, 1.5, True, ErrorClass.NONE, 200, 120.5, 80.0, 10, 900.0, None),
        Outcome(KEY, 2.5, False, ErrorClass.RATE_LIMITED, 429, None, None, 0, 5.0, 30.0),
    ]
    assert decode_outcomes(encode_outcomes(items)) == items


def test_absorbing_an_export_reproduces_the_windows() -> None:
    now = 1_800_000_000.0
    rng = random.Random(3)
    source = EndpointWindows()
    for i in range(3000):
        source.record(now - i, now, rng.random() > 0.1, rng.lognormvariate(5, 0.5), 100.0)
    copy = EndpointWindows()
    copy.absorb(source.export(now), now)
    assert copy.summary(now) == source.summary(now)
    assert copy.series(now) == source.series(now)


def test_health_state_round_trips_with_its_jitter_source() -> None:
    clock = FakeClock()
    cfg = HealthConfig()
    a = HealthTracker(cfg, clock, random.Random(1))
    for _ in range(5):
        a.record(Outcome(KEY, clock.now, False, ErrorClass.SERVER_ERROR, 503))
    b = HealthTracker(cfg, clock, random.Random(99))
    b.import_state(a.export_state(), {KEY})
    assert b.view(KEY) == a.view(KEY)
    # Same generator state: the next ejection lasts exactly as long on both.
    clock.advance(1000)
    for t in (a, b):
        for _ in range(5):
            t.record(Outcome(KEY, clock.now, False, ErrorClass.SERVER_ERROR, 503))
    assert b.view(KEY).ejected_until == a.view(KEY).ejected_until


def test_password_protected_redis_and_no_secret_in_logs(tmp_path) -> None:
    password = "pw-0123456789-SECRET"
    server = RedisServer(tmp_path / "redis", password=password)
    server.start()
    secret = tmp_path / "password"
    secret.write_text(password)
    routers = [
        RouterProcess(tmp_path, "file", server.url, "--redis-password-file", str(secret)),
        RouterProcess(tmp_path, "url", f"redis://:{password}@127.0.0.1:{server.port}/0"),
    ]
    try:
        for r in routers:
            r.start()
        for r in routers:
            r.wait_started()
        send(routers[0], [outcome("cerebras")] * 7)
        wait_until(lambda: endpoint_figures(routers[1])["cerebras"]["attempts"]["last_1h"] == 7)
        for r in routers:
            assert password not in r.log_path.read_text()
    finally:
        for r in routers:
            r.kill()
        server.kill()


@pytest.mark.parametrize("where", ["file", "url"])
def test_refused_credentials_name_the_flags_without_the_password(tmp_path, where: str) -> None:
    """A wrong password is bad input the router can only learn from Redis: the
    log said only 'redis connection lost' with redis-py's text; it now says which
    flags to check, and never the password."""
    wrong = "wrong-pw-0123456789-SECRET"
    server = RedisServer(tmp_path / "redis", password="right-pw")
    server.start()
    secret = tmp_path / "password"
    secret.write_text(wrong)
    if where == "url":
        router = RouterProcess(tmp_path, where, f"redis://:{wrong}@127.0.0.1:{server.port}/0")
    else:
        router = RouterProcess(tmp_path, where, server.url, "--redis-password-file", str(secret))
    try:
        router.start()
        lost = wait_until(
            lambda: [
                r for r in router.records() if r["message"].startswith("redis connection lost")
            ]
        )
        assert "--redis-password-file" in lost[0]["check"], lost
        assert wrong not in router.log_path.read_text()
    finally:
        router.kill()
        server.kill()


@pytest.mark.parametrize(
    ("url", "password", "unprotected"),
    [
        ("redis://redis.internal:6379/0", None, True),
        ("redis://user@10.0.0.5:6379", None, True),  # a user name alone proves nothing
        ("redis://redis.internal:6379/0", "from-a-file", False),
        ("redis://:pw@redis.internal:6379/0", None, False),
        ("rediss://redis.internal:6380?ssl_certfile=/dev/null&ssl_keyfile=/dev/null", None, False),
        ("redis://127.0.0.1:6379", None, False),  # on this host, like protected mode's loopback
        ("redis://localhost:6379", None, False),
        ("redis://[::1]:6379", None, False),
    ],
)
def test_a_remote_redis_without_credentials_is_unprotected(
    url: str, password: str | None, unprotected: bool
) -> None:
    assert ReplicationConfig(url, password=password).unprotected is unprotected


def test_a_remote_redis_without_credentials_is_warned_about_at_start(tmp_path) -> None:
    """Anything that can write the Redis writes what every replica applies: the
    router's tokens and rate limits do not cover it. Said at start, like the
    router's own protected mode (192.0.2.1 is TEST-NET: nothing answers there)."""
    router = RouterProcess(tmp_path, "open", "redis://192.0.2.1:6379/0")
    try:
        router.start()
        warned = wait_until(
            lambda: [
                r for r in router.records() if r["message"].startswith("redis without credentials")
            ]
        )
        assert warned[0]["level"] == "WARNING" and warned[0]["redis"] == "redis://192.0.2.1:6379/0"
    finally:
        router.kill()
