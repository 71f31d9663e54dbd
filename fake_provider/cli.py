"""``fake-provider`` console script: run one fake provider as its own process.

Used by the demo and by Kubernetes/compose setups where each fake provider is a
separate process. Logs one JSON line per request to stderr (status, model,
token count, timings), never prompt text, completion text or API keys.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from fake_provider.config import FakeProviderConfig, parse_incident_spec
from fake_provider.server import FakeProvider


class JsonFormatter(logging.Formatter):
    """One JSON object per line, so log shippers need no parsing rules."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fake_fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), default=str)


#: ``--log-level`` values (any case); anything else was a ValueError traceback from logging.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _port(text: str) -> int:
    """0..65535: a larger port was an OverflowError traceback from bind()."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a port 0..65535, got {json.dumps(text)}"
        ) from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {port}")
    return port


def _finite(text: str) -> float:
    """A finite number: ``nan`` compares false with every bound, so ``--ttft-ms nan``
    started without a word."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {json.dumps(text)}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {json.dumps(text)}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fake-provider",
        description="A fake OpenAI-compatible LLM provider with configurable latency and failures.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument(
        "--port", type=_port, default=9001, help="port, 0 = any free port (default 9001)"
    )
    p.add_argument(
        "--name",
        default="fake",
        help="provider name, shown in logs and headers (default fake)",
    )
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated model ids served (others get 404); default: accept any",
    )
    p.add_argument("--ttft-ms", type=_finite, default=50.0, help="median TTFT in ms (default 50)")
    p.add_argument(
        "--ttft-sigma",
        type=_finite,
        default=0.0,
        help="lognormal sigma of TTFT, 0 = constant (default 0)",
    )
    p.add_argument(
        "--tps",
        type=_finite,
        default=200.0,
        help="output tokens/s, 0 = unpaced (default 200)",
    )
    p.add_argument(
        "--error-rate",
        type=_finite,
        default=0.0,
        help="share of requests failing (default 0)",
    )
    p.add_argument(
        "--error-status",
        type=int,
        default=500,
        help="status for random errors (default 500)",
    )
    p.add_argument(
        "--rate-limit-rate",
        type=_finite,
        default=0.0,
        help="share of requests 429'd (default 0)",
    )
    p.add_argument(
        "--retry-after-s",
        type=_finite,
        default=1.0,
        help="Retry-After on 429s (default 1)",
    )
    p.add_argument(
        "--api-key-env",
        default=None,
        help="name of the env var holding the expected API key (default: no auth)",
    )
    p.add_argument("--seed", type=int, default=0, help="RNG seed for reproducible runs (default 0)")
    p.add_argument(
        "--incident",
        action="append",
        default=[],
        metavar="SPEC",
        help="scripted incident, repeatable: fail:STATUS:T1[:T2], slowdown:FACTOR:T1[:T2], "
        "drop:AFTER_TOKENS:T1[:T2], hang:T1[:T2], refuse:T1[:T2], role_drop:T1[:T2], "
        "truncate:AFTER_TOKENS:T1[:T2], error_event:AFTER_TOKENS:T1[:T2] (seconds since start; "
        "default: none)",
    )
    p.add_argument(
        "--default-max-tokens",
        type=int,
        default=32,
        help="tokens when unspecified (default 32)",
    )
    p.add_argument(
        "--record-limit",
        type=int,
        default=10_000,
        help="requests kept in memory (default 10000)",
    )
    p.add_argument(
        "--done-to-eof-ms",
        type=_finite,
        default=0.0,
        help="pause between data: [DONE] and the end of the body (the chunked terminator; "
        "default 0)",
    )
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        help="INFO logs every request (default INFO)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> FakeProviderConfig:
    """Translate CLI flags into a config; raises ValueError with a readable message."""
    api_key: str | None = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env: environment variable {args.api_key_env} is not set")
    models = None
    if args.models:
        models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    return FakeProviderConfig(
        name=args.name,
        served_models=models,
        ttft_median_ms=args.ttft_ms,
        ttft_sigma=args.ttft_sigma,
        tokens_per_second=args.tps,
        error_rate=args.error_rate,
        error_status=args.error_status,
        rate_limit_rate=args.rate_limit_rate,
        retry_after_s=args.retry_after_s,
        expected_api_key=api_key,
        seed=args.seed,
        incidents=tuple(parse_incident_spec(s) for s in args.incident),
        default_max_tokens=args.default_max_tokens,
        record_limit=args.record_limit,
        done_to_eof_ms=args.done_to_eof_ms,
    )


async def serve(config: FakeProviderConfig, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM, then shut down cleanly."""
    log = logging.getLogger("fake_provider")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, stop.set)
    async with FakeProvider(config, host=host, port=port) as fp:
        log.warning(
            "listening",
            extra={"fake_fields": {"provider": config.name, "base_url": fp.base_url}},
        )
        await stop.wait()
        log.warning("shutting down", extra={"fake_fields": {"provider": config.name}})


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("fake_provider")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(args.log_level.upper())
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    # KeyboardInterrupt: a signal arrived before the handlers were installed.
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(config, args.host, args.port))
    except OSError as exc:  # a taken port, an address not on this host: one line, no traceback
        print(
            f"fake-provider: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
