"""The ``--redis*`` flags of ``router-service`` (kept apart from cli.py for easy merges)."""

from __future__ import annotations

import argparse
from pathlib import Path

from router_common.cli_env import env_backed
from router_common.json_text import as_json
from router_service.replication.config import (
    MAX_CHECKPOINT_S,
    MIN_CHECKPOINT_S,
    RedisSettingsError,
    ReplicationConfig,
    url_has_password,
)

ENV_URL = "ROUTER_REDIS_URL"
ENV_PASSWORD_FILE = "ROUTER_REDIS_PASSWORD_FILE"
ENV_PREFIX = "ROUTER_REDIS_PREFIX"
ENV_CHECKPOINT = "ROUTER_REDIS_CHECKPOINT_INTERVAL_S"
#: Longest password file accepted (a password, not a file someone pointed at by mistake).
MAX_PASSWORD_FILE_BYTES = 4096


def _seconds(text: str) -> float:
    """A number; its bounds are ReplicationConfig's, checked after parsing."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {as_json(text)}") from None


def add_redis_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("replicas sharing state over Redis (off unless --redis)")
    env_backed(
        group.add_argument(
            "--redis",
            metavar="URL",
            # The text states the default so --help never prints a URL, which may hold
            # the Redis password; errors about it never print the variable's value.
            help=f"redis:// or rediss:// URL; replicas given the same Redis and prefix share "
            f"outcomes, sketches and health (env {ENV_URL}, never echoed here: it may hold "
            f"the password; default: none, single-process)",
        ),
        ENV_URL,
        lambda text: text or None,
        secret=True,
    )
    env_backed(
        group.add_argument(
            "--redis-password-file",
            metavar="PATH",
            help=f"file holding the Redis password (a mounted Secret), instead of putting it "
            f"in the URL (env {ENV_PASSWORD_FILE})",
        ),
        ENV_PASSWORD_FILE,
        lambda text: text or None,
    )
    env_backed(
        group.add_argument(
            "--redis-checkpoint-interval",
            type=_seconds,
            default=5.0,
            metavar="SECONDS",
            help=f"how often one replica writes the shared checkpoint a restarting replica "
            f"loads, {MIN_CHECKPOINT_S:g}..{MAX_CHECKPOINT_S:g} (env {ENV_CHECKPOINT}, "
            "default 5)",
        ),
        ENV_CHECKPOINT,
    )
    env_backed(
        group.add_argument(
            "--redis-prefix",
            default="llm-router",
            help=f"namespace of every Redis key (env {ENV_PREFIX}, default llm-router)",
        ),
        ENV_PREFIX,
        lambda text: text or "llm-router",
    )


def replication_config(args: argparse.Namespace) -> ReplicationConfig | None:
    """The replication settings the flags ask for (None: single-process mode).

    Raises RedisSettingsError naming the flag that is wrong.
    """
    if not args.redis:
        if args.redis_password_file:
            raise RedisSettingsError("--redis-password-file needs --redis")
        return None
    password = None
    if args.redis_password_file:
        if url_has_password(args.redis):
            raise RedisSettingsError(
                "give the Redis password in the --redis URL or in --redis-password-file, not both"
            )
        path = Path(args.redis_password_file)
        try:
            raw = path.read_bytes()[: MAX_PASSWORD_FILE_BYTES + 1]
        except OSError as exc:
            raise RedisSettingsError(
                f"--redis-password-file {as_json(str(path))} cannot be read: {exc.strerror}"
            ) from None
        if len(raw) > MAX_PASSWORD_FILE_BYTES:
            raise RedisSettingsError(
                f"--redis-password-file {as_json(str(path))} is over "
                f"{MAX_PASSWORD_FILE_BYTES} bytes"
            )
        try:
            # utf-8-sig: a byte order mark (Windows editors) is not part of the password.
            password = raw.decode("utf-8-sig").strip("\r\n")
        except UnicodeDecodeError:
            raise RedisSettingsError(
                f"--redis-password-file {as_json(str(path))} is not UTF-8 text"
            ) from None
        if not password:
            raise RedisSettingsError(f"--redis-password-file {as_json(str(path))} is empty")
    return ReplicationConfig(
        url=args.redis,
        password=password,
        prefix=args.redis_prefix,
        checkpoint_interval_s=args.redis_checkpoint_interval,
    )
