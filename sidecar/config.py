"""Sidecar settings, and their CLI flags and environment variables.

Every bound the sidecar enforces (body size, queue size, attempt limit, cache
entries, timeouts) is a field here with a documented default, so an operator
can tune it without reading code. Each field becomes a ``--flag-name`` and a
``SIDECAR_FLAG_NAME`` environment variable; the flag wins over the variable,
which wins over the default.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from router_common.cli_env import env_backed, origin, parse_bool, parse_with_env, relabel
from router_common.json_text import as_json
from router_common.limits import MAX_OUTCOMES_PER_BATCH, MAX_SETTING_SECONDS
from router_common.logs import LEVELS
from sidecar import defaults


def _opt(default: Any, help_text: str, **kw: Any) -> Any:
    """A dataclass field carrying its help text, so the CLI is generated from one place."""
    return field(default=default, metadata={"help": help_text, **kw})


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    """Everything the sidecar can be configured with. Immutable once built."""

    router: str = _opt(
        defaults.ROUTER_ADDRESS,
        "Router gRPC address, HOST:PORT, or a gRPC target such as "
        "dns:///HOST:PORT (calls balanced round_robin over every address it resolves to).",
    )
    router_token_file: str | None = _opt(
        None, "File holding the bearer token sent to the router (re-read when it changes)."
    )
    router_ca: str | None = _opt(
        None, "CA (PEM) that signed the router's certificate: use TLS (re-read when it changes)."
    )
    router_tls_cert: str | None = _opt(
        None, "Client certificate (PEM) for mTLS to the router (re-read when it changes)."
    )
    router_tls_key: str | None = _opt(
        None, "Client key (PEM, not encrypted) for mTLS to the router (re-read when it changes)."
    )
    provider_keys_dir: str | None = _opt(
        None,
        "Directory of provider API keys, one file per variable name (a Kubernetes Secret "
        "mounted as a volume): a key not in the environment is read from "
        "DIR/<api_key_env>, once, at its first use.",
    )
    listen: str = _opt(
        f"{defaults.LISTEN_HOST}:{defaults.LISTEN_PORT}",
        "Address to serve the OpenAI API on, HOST:PORT (loopback by default; port 0 = any).",
    )
    fallback_catalog: str | None = _opt(
        None, "Catalog YAML used when the router is unreachable and no ranking is cached."
    )
    log_level: str = _opt("INFO", "Log level (JSON logs on stderr).")

    # Request bounds.
    max_body_bytes: int = _opt(4 * 1024 * 1024, "Largest request body accepted (413 above).")
    max_attempts: int = _opt(3, "Upstream attempts per request, fallbacks included.")
    request_deadline_s: float = _opt(
        120.0, "No new attempt starts after this many seconds; bounds time to first token too."
    )
    shutdown_grace_s: float = _opt(
        10.0,
        "On SIGTERM/SIGINT: stop listening at once, let in-flight requests finish for "
        "this long, then end the rest with an error the app can read (a stream's error "
        "event and [DONE], else a 503), never a cut connection.",
    )
    client_idle_timeout_s: float = _opt(
        15.0,
        "An app's connection is closed when idle this long between requests, or when its "
        "request head has not fully arrived this long after the connection opened or the "
        "previous answer; a request body not fully read within it is a 408.",
    )
    connect_timeout_s: float = _opt(5.0, "TCP/TLS connect timeout per attempt.")
    upstream_client: str = _opt(
        "lean",
        "HTTP client for provider calls: lean (httptools, less CPU per request) or aiohttp.",
    )
    http_server: str = _opt(
        "lean",
        "HTTP server for apps: lean (chat POSTs with a Content-Length body parsed by the "
        "sidecar, less CPU per request; every other request goes to aiohttp on the same "
        "connection) or aiohttp (aiohttp serves every request).",
    )
    first_byte_timeout_s: float = _opt(
        30.0, "Time from sending the request to response headers and to the first token."
    )
    adaptive_first_token_timeout: bool = _opt(
        True,
        "Cut a streaming attempt's first-token wait to the router's per-endpoint suggestion "
        "(2x its recent p99 TTFT, at least 0.5 s) when shorter than first_byte_timeout_s.",
    )
    provider_first_token_timeouts: str = _opt(
        "",
        "Per-provider first-token timeout, NAME=MILLISECONDS[,NAME=MILLISECONDS...]: that "
        "provider's ceiling in place of first_byte_timeout_s (streams: first token; "
        "non-streaming: response headers). Empty = none.",
    )
    hedge: bool = _opt(
        False,
        "Hedge streaming requests by default: start the next provider when the first has no "
        "first token by its recent p95 TTFT (a request's provider.hedge overrides).",
    )
    hedge_budget_share: float = _opt(
        0.05, "Hedged attempts at most this share of hedging-enabled requests (+1), decayed 60 s."
    )
    hedge_min_delay_s: float = _opt(
        0.05, "Never hedge earlier than this after an attempt starts, whatever the p95."
    )
    race_explorations: bool = _opt(
        True,
        "Under sort ttft, a streaming request whose first provider is an exploration pick "
        "(stale or no data; at most the router's exploration share of requests) starts the "
        "leader at the same time: the first token wins, the other is read to its first token, "
        "reported and closed (it costs its prompt and at most a token).",
    )
    slow_start_multiple: float = _opt(
        2.0,
        "A streaming attempt (sort ttft or load balance) with no first token after this "
        "multiple of its endpoint's recent p95 TTFT (the router's hedge_after_ms) puts the "
        "endpoint at the back of this sidecar's order for slow_start_cooldown_s (0 = off).",
    )
    slow_start_cooldown_s: float = _opt(
        3.0,
        "How long an endpoint caught slow to start stays at the back here: about the time "
        "the router needs to see the outcome (flush 0.5 s) and the ranking cache to refresh.",
    )
    chunk_timeout_s: float = _opt(
        30.0,
        "Longest silence allowed between two stream chunks (SSE lines: the bytes of "
        "a line that has not ended do not count).",
    )
    nonstream_timeout_s: float = _opt(
        60.0, "Whole-answer timeout of a non-streaming attempt (its first byte is the answer)."
    )
    max_upstream_response_bytes: int = _opt(
        defaults.MAX_UPSTREAM_RESPONSE_BYTES,
        "Largest non-streaming upstream body, and longest line of a stream, read from a "
        "provider (the attempt fails above it).",
    )
    max_error_body_bytes: int = _opt(64 * 1024, "Upstream error bodies are truncated to this.")

    # Ranking.
    rank_timeout_s: float = _opt(1.0, "Deadline of one RankProviders call.")
    rank_cache_ttl_s: float = _opt(2.0, "How long a ranking is reused for the same model+prefs.")
    rank_cache_unmeasured_ttl_s: float = _opt(
        0.5,
        "A ranking whose first endpoint the router has no TTFT for yet (a fresh router, a new "
        "model) is reused at most this long: the first outcomes (flushed every 0.5 s) tell "
        "the router which is fastest, and a 2 s reuse would spread those seconds over all.",
    )
    rank_revalidate_s: float = _opt(
        2.0,
        "For this long after its TTL a ranking is still used while a background call "
        "refreshes it, so no request waits for the router (0 = wait; TTL 0 = never reuse).",
    )
    rank_cache_stale_s: float = _opt(
        3600.0, "How long an expired ranking may still be used while the router is unreachable."
    )
    rank_cache_entries: int = _opt(1024, "Rankings cached (LRU; preferences come from callers).")
    explore_stale_after_s: float = _opt(
        1.5,
        "Between ranking fetches, an endpoint this sidecar has had no first token from for "
        "this long (counted from the later of its last first token here and the fetch) "
        "may be explored like one the router marked explorable, within the router's "
        "exploration_share; endpoints in a local cooldown are never explored. The router's "
        "own staleness default (1.5 s): a reused ranking would otherwise freeze the stale "
        "set for its whole TTL (0 = off).",
    )
    router_retry_s: float = _opt(
        1.0,
        "After a failed router call, skip the router for this long (use cache/catalog); "
        "then, while a cached ranking or the catalog can serve, ask it again in the "
        "background.",
    )
    cooldown_s: float = _opt(
        10.0, "An endpoint that failed here is not tried first again for this long."
    )
    max_cooldown_s: float = _opt(60.0, "Cap on a cooldown taken from a 429's Retry-After.")
    cooldown_entries: int = _opt(4096, "Endpoints with a local cooldown remembered (bounded).")

    # Outcome reporting.
    outcome_queue_size: int = _opt(10_000, "Outcomes held for the router (oldest dropped above).")
    outcome_batch_size: int = _opt(500, "Outcomes per StreamOutcomes message (proto max 1000).")
    outcome_flush_interval_s: float = _opt(0.5, "How often queued outcomes are sent.")
    outcome_urgent_min_gap_s: float = _opt(
        0.05,
        "An outcome carrying evidence the router lacks (an endpoint's first answer while the "
        "router had no TTFT for it, an explorable endpoint beating the leader's p95, an "
        "answer past slow_start_multiple x its p95, an endpoint's first failure here) is "
        "sent at once rather than at the next flush, but early flushes are at least this "
        "far apart, so a flood cannot cause a flush storm (0 = off: every outcome waits).",
    )
    outcome_send_timeout_s: float = _opt(5.0, "Deadline of one StreamOutcomes call.")
    outcome_max_backoff_s: float = _opt(5.0, "Cap on the retry backoff while the router is down.")

    # Default routing preferences, applied when the request names none.
    default_sort: str | None = _opt(None, "Default sort: cost, ttft or tps (none = balance).")
    default_zdr: bool = _opt(False, "Require zero-data-retention providers by default.")

    # Tests inject a mapping here instead of mutating os.environ; None = os.environ.
    environ: Mapping[str, str] | None = field(default=None, metadata={"cli": False})

    def env(self) -> Mapping[str, str]:
        """Where provider API keys are read from (only ever the sidecar's environment)."""
        return os.environ if self.environ is None else self.environ

    @property
    def listen_host(self) -> str:
        return split_host_port(self.listen, defaults.LISTEN_HOST)[0]

    @property
    def listen_port(self) -> int:
        return split_host_port(self.listen, defaults.LISTEN_HOST)[1]


def split_host_port(addr: str, default_host: str, lowest_port: int = 0) -> tuple[str, int]:
    """Parse ``HOST:PORT``, ``:PORT`` or ``[v6]:PORT``; a bare port binds the default host.

    A port outside ``lowest_port..65535`` is a ValueError here, at start, not an
    OverflowError traceback from ``bind()`` (or a channel that never connects)."""
    addr = addr.strip()
    if addr.isdigit():
        host, port = default_host, addr
    else:
        host, sep, port = addr.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, got {as_json(addr)}")
        host = host.strip("[]") or default_host
    if not lowest_port <= int(port) <= 65535:
        raise ValueError(f"port must be {lowest_port}..65535, got {as_json(addr)}")
    return host, int(port)


def _env_name(name: str) -> str:
    known = {
        "router": defaults.ENV_ROUTER,
        "listen": defaults.ENV_LISTEN,
        "fallback_catalog": defaults.ENV_FALLBACK_CATALOG,
        "log_level": defaults.ENV_LOG_LEVEL,
    }
    return known.get(name, "SIDECAR_" + name.upper())


def _converter(f: Any) -> Any:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if t.startswith("int"):
        return int
    if t.startswith("float"):
        return float
    if t.startswith("bool"):
        return parse_bool
    return str


def _shown_default(value: object) -> str:
    """A default as the flag would take it: ``none`` for no value (not Python's
    ``None`` or an empty string, which printed as "Default: ."), ``true``/``false``
    for switches (what ``parse_bool`` accepts), else the value itself."""
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    """The ``router-sidecar`` argument parser, generated from SidecarSettings."""
    parser = argparse.ArgumentParser(
        prog="router-sidecar",
        description="OpenAI-compatible sidecar that routes each request to the best provider.",
    )
    for f in fields(SidecarSettings):
        if f.metadata.get("cli") is False:
            continue
        default = None if f.default is MISSING else f.default
        env_backed(
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                type=_converter(f),
                default=None,
                help=f"{f.metadata['help']} Env {_env_name(f.name)}. "
                f"Default: {_shown_default(default)}.",
            ),
            _env_name(f.name),
        )
    return parser


def settings_from_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> SidecarSettings:
    """Build settings from flags, then environment variables, then defaults."""
    ns = parse_with_env(build_parser(), argv, environ)
    values: dict[str, Any] = {}
    for f in fields(SidecarSettings):
        if f.metadata.get("cli") is not False and getattr(ns, f.name) is not None:
            values[f.name] = getattr(ns, f.name)
    settings = SidecarSettings(**values)
    problem = check_settings(settings)
    if problem is not None:
        raise SystemExit(f"router-sidecar: {relabel(ns, problem)}")
    for flag, address, lowest_port in (
        ("--listen", settings.listen, 0),  # 0: any free port
        ("--router", settings.router, 1),
    ):
        try:
            split_host_port(address, "127.0.0.1", lowest_port)
        except ValueError as exc:
            raise SystemExit(f"router-sidecar: {relabel(ns, flag)}: {exc}") from exc
    from sidecar.timeouts import parse_provider_timeouts  # timeouts imports this module

    try:
        parse_provider_timeouts(settings.provider_first_token_timeouts)
    except ValueError as exc:
        name = origin(ns, "provider_first_token_timeouts", "--provider-first-token-timeouts")
        raise SystemExit(f"router-sidecar: {name}: {exc}") from exc
    return settings


#: Numeric settings that must be above zero: at zero the sidecar would accept no body,
#: make no attempt, time every call out at once, or hold and send no outcome.
_POSITIVE = frozenset(
    {
        "max_body_bytes",
        "client_idle_timeout_s",
        "max_attempts",
        "request_deadline_s",
        "connect_timeout_s",
        "first_byte_timeout_s",
        "chunk_timeout_s",
        "nonstream_timeout_s",
        "max_upstream_response_bytes",
        "max_error_body_bytes",
        "rank_timeout_s",
        "rank_cache_entries",
        "cooldown_entries",
        "outcome_queue_size",
        "outcome_batch_size",
        "outcome_flush_interval_s",
        "outcome_send_timeout_s",
        "outcome_max_backoff_s",
    }
)
#: The ``--upstream-client`` values (sidecar/transport.py builds each).
UPSTREAM_CLIENTS = ("lean", "aiohttp")
#: The ``--http-server`` values (sidecar/app.py starts each; sidecar/lean_server.py).
HTTP_SERVERS = ("lean", "aiohttp")
#: The longest any ``*_s`` setting may be (router_common.limits): ``--rank-timeout-s
#: 1e300`` made every RankProviders call fail at once with DEADLINE_EXCEEDED, and the
#: sidecar silently served from its fallback catalog.
MAX_SECONDS = MAX_SETTING_SECONDS
#: Settings that are a share of requests (0..1).
_SHARES = frozenset({"hedge_budget_share"})


def check_settings(settings: SidecarSettings) -> str | None:
    """The first setting outside its bounds, named as its flag; None when all are sane.

    ``float()`` reads "nan" and "inf", and nothing else refused a negative: a
    ``--request-deadline-s nan`` made every deadline comparison false and a
    ``--default-sort fastest`` made every request a 500, both after a clean start.
    """
    from sidecar.preferences import SORTS  # preferences' table; imported late (no cycle)

    for f in fields(SidecarSettings):
        value = getattr(settings, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        flag = "--" + f.name.replace("_", "-")
        if not math.isfinite(value) or value < 0:  # the bound the setting really has
            bound = "above 0" if f.name in _POSITIVE else ">= 0"
            return f"{flag} must be a finite number {bound}, got {as_json(value)}"
        if f.name in _POSITIVE and value <= 0:
            return f"{flag} must be above 0, got {as_json(value)}"
        if f.name.endswith("_s") and value > MAX_SECONDS:
            return f"{flag} must be at most {MAX_SECONDS:g} seconds, got {as_json(value)}"
        if f.name in _SHARES and value > 1:
            return f"{flag} must be a share from 0 to 1, got {as_json(value)}"
    # An empty file name (SIDECAR_ROUTER_TLS_KEY= from a missing Secret key) is a
    # mistake, not "unset": an empty --router-tls-key aborted the process in gRPC
    # core (SIGABRT, a C stack trace), and an empty --router-ca alone meant no TLS.
    for name in (
        "router_ca",
        "router_tls_cert",
        "router_tls_key",
        "router_token_file",
        "provider_keys_dir",
    ):
        value = getattr(settings, name)
        if value is not None and not value.strip():
            flag = "--" + name.replace("_", "-")
            # From a variable, cli_env names it and the flag; from a flag, the flag.
            return f"{flag} is empty: name a file, or leave it unset"
    if settings.provider_keys_dir is not None and not os.path.isdir(settings.provider_keys_dir):
        shown = as_json(settings.provider_keys_dir, max_chars=1024)
        return f"--provider-keys-dir {shown} is not a directory"
    if settings.outcome_batch_size > MAX_OUTCOMES_PER_BATCH:
        return (
            f"--outcome-batch-size must be at most {MAX_OUTCOMES_PER_BATCH} (the proto's "
            f"limit), got {settings.outcome_batch_size}"
        )
    if settings.log_level.lower() not in LEVELS:  # checked here so a variable is named
        levels = ", ".join(LEVELS)
        return f"--log-level must be one of {levels}, got {as_json(settings.log_level)}"
    if settings.upstream_client not in UPSTREAM_CLIENTS:
        return (
            f"--upstream-client must be one of {as_json(list(UPSTREAM_CLIENTS))}, "
            f"got {as_json(settings.upstream_client)}"
        )
    if settings.http_server not in HTTP_SERVERS:
        return (
            f"--http-server must be one of {as_json(list(HTTP_SERVERS))}, "
            f"got {as_json(settings.http_server)}"
        )
    if settings.default_sort is not None and settings.default_sort.lower() not in SORTS:
        return (
            f"--default-sort must be one of {as_json(sorted(SORTS))}, "
            f"got {as_json(settings.default_sort)}"
        )
    return None
