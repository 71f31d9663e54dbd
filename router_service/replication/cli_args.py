"""The ``--redis*`` flags of ``router-service`` (kept apart from cli.py for easy merges)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from router_service.replication.config import (
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


def add_redis_arguments(
    parser: argparse.ArgumentParser, env: Mapping[str, str] = os.environ
) -> None:
    group = parser.add_argument_group("replicas sharing state over Redis (off unless --redis)")
    group.add_argument(
        "--redis",
        default=env.get(ENV_URL) or None,
        metavar="URL",
        # The text states the default so --help never prints the value read from the
        # environment: the URL may hold the Redis password.
        help=f"redis:// or rediss:// URL; replicas given the same Redis and prefix share "
        f"outcomes, sketches and health (env {ENV_URL}, never echoed here: it may hold "
        f"the password; default: none, single-process)",
    )
    group.add_argument(
        "--redis-password-file",
        default=env.get(ENV_PASSWORD_FILE) or None,
        metavar="PATH",
        help=f"file holding the Redis password (a mounted Secret), instead of putting it "
        f"in the URL (env {ENV_PASSWORD_FILE})",
    )
    group.add_argument(
        "--redis-checkpoint-interval",
        type=float,
        default=env.get(ENV_CHECKPOINT, "5"),
        metavar="SECONDS",
        help=f"how often one replica writes the shared checkpoint a restarting replica "
        f"loads (env {ENV_CHECKPOINT}, default 5)",
    )
    group.add_argument(
        "--redis-prefix",
        default=env.get(ENV_PREFIX) or "llm-router",
        help=f"namespace of every Redis key (env {ENV_PREFIX}, default llm-router)",
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
                f"--redis-password-file {str(path)!r} cannot be read: {exc.strerror}"
            ) from None
        if len(raw) > MAX_PASSWORD_FILE_BYTES:
            raise RedisSettingsError(
                f"--redis-password-file {str(path)!r} is over {MAX_PASSWORD_FILE_BYTES} bytes"
            )
        try:
            # utf-8-sig: a byte order mark (Windows editors) is not part of the password.
            password = raw.decode("utf-8-sig").strip("\r\n")
        except UnicodeDecodeError:
            raise RedisSettingsError(
                f"--redis-password-file {str(path)!r} is not UTF-8 text"
            ) from None
        if not password:
            raise RedisSettingsError(f"--redis-password-file {str(path)!r} is empty")
    return ReplicationConfig(
        url=args.redis,
        password=password,
        prefix=args.redis_prefix,
        checkpoint_interval_s=args.redis_checkpoint_interval,
    )
