"""``router-service`` flags for authentication, TLS, protected mode and caller limits.

Each flag also reads an environment variable (the flag wins), like the rest of
the CLI.
"""

from __future__ import annotations

import argparse
import math

from router_common.cli_env import env_backed, parse_bool
from router_common.json_text import as_json
from router_common.limits import MAX_OUTCOMES_PER_BATCH, MAX_SETTING_SECONDS
from router_service.callers import CallerLimitsConfig
from router_service.listen import ConnectionLimits
from router_service.security import SecuritySettings

#: The longest connection timeout a flag may set (see security_settings).
MAX_TIMEOUT_S = MAX_SETTING_SECONDS

ENV = {
    "auth_tokens": "ROUTER_AUTH_TOKENS",
    "tls_cert": "ROUTER_TLS_CERT",
    "tls_key": "ROUTER_TLS_KEY",
    "tls_client_ca": "ROUTER_TLS_CLIENT_CA",
    "allow_unauthenticated": "ROUTER_ALLOW_UNAUTHENTICATED",
    "outcomes_per_second": "ROUTER_CALLER_OUTCOMES_PER_SECOND",
    "outcome_burst": "ROUTER_CALLER_OUTCOME_BURST",
}


def _finite(text: str) -> float:
    """A finite float (``nan`` would silently switch a limit off); argparse reports the rest."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {as_json(text)}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {as_json(text)}")
    return value


def add_security_flags(parser: argparse.ArgumentParser) -> None:
    env_backed(
        parser.add_argument(
            "--auth-tokens",
            help="YAML of named callers with tokens and scopes; reloaded on change "
            f"(env {ENV['auth_tokens']})",
        ),
        ENV["auth_tokens"],
    )
    env_backed(
        parser.add_argument("--tls-cert", help=f"PEM (env {ENV['tls_cert']})"), ENV["tls_cert"]
    )
    env_backed(parser.add_argument("--tls-key", help=f"PEM (env {ENV['tls_key']})"), ENV["tls_key"])
    env_backed(
        parser.add_argument(
            "--tls-client-ca",
            help="require client certificates signed by this CA (mTLS); the caller is named "
            f"by its certificate (env {ENV['tls_client_ca']})",
        ),
        ENV["tls_client_ca"],
    )
    env_backed(
        parser.add_argument(
            "--allow-unauthenticated",
            action="store_true",
            help="listen beyond loopback without tokens or mTLS (protected mode off; "
            f"env {ENV['allow_unauthenticated']}=true, or 1/yes/on; 0/false/no/off/empty "
            "keep protected mode on; default off)",
        ),
        ENV["allow_unauthenticated"],
        parse_bool,
    )
    defaults = CallerLimitsConfig()
    env_backed(
        parser.add_argument(
            "--caller-outcomes-per-second",
            type=_finite,
            default=defaults.outcomes_per_second,
            help="per-caller outcome rate limit, 0 = off "
            f"(env {ENV['outcomes_per_second']}, default {defaults.outcomes_per_second:g})",
        ),
        ENV["outcomes_per_second"],
    )
    env_backed(
        parser.add_argument(
            "--caller-outcome-burst",
            type=_finite,
            default=defaults.outcome_burst,
            help=f"per-caller burst, at least {MAX_OUTCOMES_PER_BATCH} "
            f"(env {ENV['outcome_burst']}, default {defaults.outcome_burst:g})",
        ),
        ENV["outcome_burst"],
    )


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """The connection timeouts an operator most often needs to change (see ConnectionLimits)."""
    base = ConnectionLimits()
    for flag, field, help_text in (
        ("--http-idle-timeout-s", "http_keepalive_timeout_s", "idle HTTP connections close"),
        (
            "--grpc-handshake-timeout-s",
            "handshake_timeout_s",
            "gRPC connections that never finish their handshake close",
        ),
        (
            "--stream-idle-timeout-s",
            "idle_stream_timeout_s",
            "a StreamOutcomes call sending nothing ends",
        ),
    ):
        name = "ROUTER_" + flag.lstrip("-").replace("-", "_").upper()
        env_backed(
            parser.add_argument(
                flag,
                dest=field,
                # The dest is ConnectionLimits' field name, which --help would show as
                # HTTP_KEEPALIVE_TIMEOUT_S beside ROUTER_HTTP_IDLE_TIMEOUT_S.
                metavar="SECONDS",
                type=_finite,
                default=getattr(base, field),
                help=f"seconds after which {help_text}, above 0 and at most {MAX_TIMEOUT_S:g} "
                f"(env {name}, default {getattr(base, field):g})",
            ),
            name,
        )


def security_settings(args: argparse.Namespace) -> SecuritySettings:
    """Raises ValueError with a one-line reason for inconsistent flags."""
    connections = ConnectionLimits(
        http_keepalive_timeout_s=args.http_keepalive_timeout_s,
        handshake_timeout_s=args.handshake_timeout_s,
        idle_stream_timeout_s=args.idle_stream_timeout_s,
    )
    for flag, value in (
        ("--http-idle-timeout-s", connections.http_keepalive_timeout_s),
        ("--grpc-handshake-timeout-s", connections.handshake_timeout_s),
        ("--stream-idle-timeout-s", connections.idle_stream_timeout_s),
    ):
        # At most a day: gRPC takes milliseconds as a C int (a traceback past ~24 days).
        if not 0 < value <= MAX_TIMEOUT_S:
            raise ValueError(
                f"{flag} must be > 0 and at most {MAX_TIMEOUT_S:g} seconds, got {value:g}"
            )
    # An empty value (ROUTER_TLS_KEY= from a missing Secret key, --tls-key "") is a
    # mistake, not "unset": --tls-cert with an empty --tls-key served plaintext on
    # both ports while the start line said https, and an empty --tls-client-ca
    # silently asked no client certificate.
    for flag, value in (
        ("--auth-tokens", args.auth_tokens),
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
        ("--tls-client-ca", args.tls_client_ca),
    ):
        if value is not None and not value.strip():  # from a variable, cli_env names it
            raise ValueError(f"{flag} is empty: name a file, or leave it unset")
    # Checked here, not only in CallerLimitsConfig, so the message names the flag.
    if args.caller_outcomes_per_second < 0:
        raise ValueError(
            "--caller-outcomes-per-second must be >= 0 (0: no limit), "
            f"got {args.caller_outcomes_per_second:g}"
        )
    if args.caller_outcome_burst < MAX_OUTCOMES_PER_BATCH:
        raise ValueError(
            f"--caller-outcome-burst must be >= {MAX_OUTCOMES_PER_BATCH} (one full batch), "
            f"got {args.caller_outcome_burst:g}"
        )
    return SecuritySettings(
        connections=connections,
        auth_tokens=args.auth_tokens,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        allow_unauthenticated=args.allow_unauthenticated,
        caller_limits=CallerLimitsConfig(
            outcomes_per_second=args.caller_outcomes_per_second,
            outcome_burst=args.caller_outcome_burst,
        ),
    )
