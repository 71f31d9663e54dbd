"""``router-service``: run the router until SIGTERM.

Each flag can also come from an environment variable (flag wins), which is how
Kubernetes manifests usually configure a container. SIGTERM and SIGINT drain
in-flight RPCs and exit 0; SIGHUP reloads the catalog. A bad catalog at start
exits 2 with the file, key path and problem on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from router_common.catalog import CatalogError
from router_common.cli_env import env_backed, parse_bool, parse_with_env, relabel
from router_common.cli_help import DefaultsHelpFormatter
from router_common.json_text import as_json
from router_common.log_limit import LogLimiter, install_accept_error_limit
from router_common.logs import LEVELS, configure_logging
from router_service import defaults
from router_service.app import RouterApp, Settings
from router_service.auth import AuthConfigError
from router_service.gc_pauses import freeze_startup_heap
from router_service.health import HealthConfig
from router_service.ingest import IngestPacing
from router_service.listen import PortInUseError, raise_file_limit
from router_service.ranking import RankingConfig
from router_service.replication.cli_args import add_redis_arguments, replication_config
from router_service.replication.config import RedisSettingsError
from router_service.rpc_guard import install_unraisable_limit
from router_service.security_cli import (
    add_connection_flags,
    add_security_flags,
    security_settings,
)
from router_service.tuning import TuningError, load_tuning

log = logging.getLogger("router_service")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {as_json(text)}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {as_json(value)}")
    return value


def _catalog_path(text: str) -> str:
    """Not empty: ``--config ""`` (or ``ROUTER_CONFIG=`` in a manifest) read the
    working directory and said ``: (file): cannot read: Is a directory``."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected the catalog's path, got {as_json(text)}")
    return text


def _level(text: str) -> str:
    level = text.lower()
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(
            f"expected one of {as_json(list(LEVELS))}, got {as_json(text)}"
        )
    return level


def _share(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number in (0, 1], got {as_json(value)}"
        ) from None
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {as_json(value)}")
    return share


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, each falling back to its environment variable (router_common.cli_env).

    A bad variable exits 2 with one line naming the variable and the flag it
    sets, never a traceback; --help shows the built-in defaults, never a value
    read from the environment.
    """
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="router-service",
        description="LLM provider router: gRPC ranking service.",
        formatter_class=DefaultsHelpFormatter,
    )
    env_backed(
        parser.add_argument(
            "--config",
            type=_catalog_path,
            required=defaults.ENV_CONFIG not in env,
            help=f"catalog YAML (env {defaults.ENV_CONFIG})",
        ),
        defaults.ENV_CONFIG,
    )
    env_backed(
        parser.add_argument(
            "--grpc-port",
            type=_port,
            default=defaults.GRPC_PORT,
            help=f"gRPC port (env {defaults.ENV_GRPC_PORT}, default {defaults.GRPC_PORT})",
        ),
        defaults.ENV_GRPC_PORT,
    )
    env_backed(
        parser.add_argument(
            "--http-port",
            type=_port,
            default=defaults.HTTP_PORT,
            help=f"HTTP port for /metrics, the metrics API and the dashboard "
            f"(env {defaults.ENV_HTTP_PORT}, default {defaults.HTTP_PORT})",
        ),
        defaults.ENV_HTTP_PORT,
    )
    env_backed(
        parser.add_argument(
            "--host", default="0.0.0.0", help="bind address of gRPC and HTTP (env ROUTER_HOST)"
        ),
        "ROUTER_HOST",
    )
    env_backed(
        parser.add_argument(
            "--tuning",
            help="optional YAML of health thresholds and ranking knobs; omitted keys keep "
            f"their documented defaults (env {defaults.ENV_TUNING})",
        ),
        defaults.ENV_TUNING,
    )
    env_backed(
        parser.add_argument(
            "--log-level",
            type=_level,
            choices=LEVELS,
            default=defaults.LOG_LEVEL,
            help=f"(env {defaults.ENV_LOG_LEVEL}, default {defaults.LOG_LEVEL})",
        ),
        defaults.ENV_LOG_LEVEL,
    )
    env_backed(
        parser.add_argument(
            "--ingest-share",
            type=_share,
            default=IngestPacing().share,
            help="most of the event loop's time outcome ingestion may take while RankProviders "
            "calls are being served, in (0, 1]; 1 = unpaced (env ROUTER_INGEST_SHARE, "
            f"default {IngestPacing().share})",
        ),
        "ROUTER_INGEST_SHARE",
    )
    env_backed(
        parser.add_argument(
            "--sketch-worker",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="keep the latency sketches and the dashboard history in a worker process, "
            "off the event loop that answers RankProviders (env "
            "ROUTER_SKETCH_WORKER=true/false, or 1/0, yes/no, on/off; default on)",
        ),
        "ROUTER_SKETCH_WORKER",
        parse_bool,
    )
    add_security_flags(parser)
    add_connection_flags(parser)
    add_redis_arguments(parser)
    return parse_with_env(parser, argv, env)


async def serve(settings: Settings) -> int:
    app = RouterApp(settings)
    # Before start, not after: "router started" is logged inside start(), and a
    # SIGTERM sent on seeing it (a test, an impatient operator) must drain and exit
    # 0, not kill the process in the window before the handlers existed.
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    try:
        await app.start()
    except CatalogError as exc:
        log.error("cannot load catalog", extra={"error": str(exc)})
        print(f"router-service: {exc}", file=sys.stderr)
        await app.stop()
        return 2
    except (PortInUseError, AuthConfigError, OSError) as exc:
        # One line, no traceback: a taken port, an unusable tokens or TLS file.
        log.error("cannot start", extra={"error": str(exc)})
        print(f"router-service: {exc}", file=sys.stderr)
        await app.stop()
        return 2
    freeze_startup_heap()
    loop.add_signal_handler(signal.SIGHUP, app.reload_catalog)
    await stopping.wait()
    log.info("shutting down: draining in-flight calls")
    await app.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    health, ranking = HealthConfig(), RankingConfig()
    if args.tuning:
        try:
            health, ranking = load_tuning(args.tuning)
        except TuningError as exc:
            print(f"router-service: {exc}", file=sys.stderr)
            return 2
    try:
        security = security_settings(args)
    except ValueError as exc:
        print(f"router-service: {relabel(args, str(exc))}", file=sys.stderr)
        return 2
    try:
        replication = replication_config(args)
    except RedisSettingsError as exc:
        print(f"router-service: {relabel(args, str(exc))}", file=sys.stderr)
        return 2
    raise_file_limit()
    install_accept_error_limit(LogLimiter())
    install_unraisable_limit(LogLimiter())
    settings = Settings(
        security=security,
        config_path=args.config,
        grpc_host=args.host,
        grpc_port=args.grpc_port,
        http_host=args.host,
        http_port=args.http_port,
        health=health,
        ranking=ranking,
        replication=replication,
        ingest_pacing=IngestPacing(share=args.ingest_share),
        sketch_worker=args.sketch_worker,
    )
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
