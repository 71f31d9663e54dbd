"""Settings of replica sharing over Redis, each with its default and its reason."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from router_common.json_text import as_json
from router_service.listen import is_loopback

SCHEMES = ("redis", "rediss")
#: The query parameters a ``rediss://`` URL may carry: where the client finds
#: the CA that signed Redis's certificate (a private CA), its own certificate
#: for mutual TLS, and how strictly it checks. redis-py reads any query
#: parameter as a connection setting: an unknown one failed every connection
#: attempt with a traceback, and a bad number killed the process at start.
TLS_FILE_PARAMETERS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
TLS_CERT_REQS = ("none", "optional", "required")
TLS_BOOLEANS = ("true", "false", "yes", "no", "1", "0")
TLS_PARAMETERS = (*TLS_FILE_PARAMETERS, "ssl_cert_reqs", "ssl_check_hostname")


#: Bounds of ``--redis-checkpoint-interval`` (seconds).
MIN_CHECKPOINT_S = 0.05
MAX_CHECKPOINT_S = 3600.0


class RedisSettingsError(ValueError):
    """A --redis URL, password file or prefix that cannot be used (named in the message)."""


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    """How a router replica shares outcomes and state with its peers through Redis."""

    #: ``redis://[user[:password]@]host[:port][/db]`` or ``rediss://`` (TLS).
    url: str
    #: Password read from ``--redis-password-file`` (None: from the URL, or none).
    password: str | None = None
    #: Every key this router writes starts with ``<prefix>:``, so several fleets
    #: (or other applications) can share one Redis.
    prefix: str = "llm-router"
    #: Outcomes waiting to be published while Redis is slow or down. 100,000 is
    #: 20 s of a busy fleet's 5,000 outcomes/s at ~100 bytes each (~10 MB);
    #: beyond it the oldest are dropped (counted) — every replica keeps its own.
    buffer_max_outcomes: int = 100_000
    #: Outcomes per stream entry at most (one accepted batch is split above it),
    #: so one entry is at most ~25 KB (about 110 bytes per outcome).
    max_outcomes_per_entry: int = 200
    #: Stream entries kept (approximate MAXLEN): bounds the stream's size even
    #: if every entry were full (20,000 x 25 KB = 500 MB worst case; a fleet
    #: whose sidecars report in batches of 10 holds ~20 MB); checkpoints make
    #: old entries unnecessary.
    stream_max_entries: int = 20_000
    #: Stream entries older than this are trimmed (MINID) and the stream key
    #: expires after it when no replica writes: 2 min is 24 checkpoints, so a
    #: starting replica finds the checkpoint's position still in the stream.
    stream_retention_s: float = 120.0
    #: One replica (a lease holder) writes the merged state this often; a
    #: restarting replica loads it and replays only the stream after it.
    checkpoint_interval_s: float = 5.0
    #: The checkpoint key expires after a day without a writer (the longest window).
    checkpoint_ttl_s: float = 86_400.0
    #: Own outcomes reach health in stream order; if the stream does not bring
    #: them back within this, they are applied locally (Redis slow or down).
    echo_timeout_s: float = 1.0
    #: XREAD blocks at most this long (must stay under ``socket_timeout_s``).
    read_block_s: float = 1.0
    #: A Redis call that takes longer than this counts as an error (Redis slow).
    socket_timeout_s: float = 3.0
    #: Reconnect backoff: from ``backoff_min_s`` doubling to ``backoff_max_s``, jittered.
    backoff_min_s: float = 0.1
    backoff_max_s: float = 5.0
    #: After Redis comes back, batches published this recently are published
    #: again: a Redis that restarted empty may have lost them before every peer
    #: read them. Peers drop what they already applied (per-replica batch numbers).
    republish_window_s: float = 3.0
    #: How often the half-open probe permits are claimed/renewed/released.
    probe_poll_s: float = 0.1
    #: A replica starting up waits this long for Redis before it serves from an
    #: empty state (it keeps trying in the background). Readiness stays
    #: NOT_SERVING meanwhile, so a fleet with a working Redis never routes to a
    #: replica that has not loaded the shared state.
    startup_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        check_url(self.url)
        if not self.prefix or any(c.isspace() for c in self.prefix) or len(self.prefix) > 64:
            raise RedisSettingsError(
                "--redis-prefix must be 1..64 characters without spaces, "
                f"got {as_json(self.prefix)}"
            )
        if not MIN_CHECKPOINT_S <= self.checkpoint_interval_s <= MAX_CHECKPOINT_S:
            raise RedisSettingsError(
                f"--redis-checkpoint-interval must be {MIN_CHECKPOINT_S:g}..{MAX_CHECKPOINT_S:g} "
                f"seconds, got {as_json(self.checkpoint_interval_s)}"
            )
        if self.read_block_s >= self.socket_timeout_s:
            raise RedisSettingsError("read_block_s must be below socket_timeout_s")
        for name in ("buffer_max_outcomes", "max_outcomes_per_entry", "stream_max_entries"):
            if getattr(self, name) < 1:
                raise RedisSettingsError(f"{name} must be at least 1")

    def __repr__(self) -> str:
        """Without the URL's credentials or the password: the config sits in the
        router's Settings, whose repr a traceback with locals, a debugger or a test
        failure prints (the dataclass repr printed both)."""
        return f"ReplicationConfig(redis={self.redacted_url!r}, prefix={self.prefix!r}, ...)"

    @property
    def unprotected(self) -> bool:
        """Redis off this host with nothing that authenticates the router to it.

        Whatever can write to that Redis writes outcomes and health that every
        replica applies, past the router's own tokens and rate limits: the hole
        protected mode closes on the router's port, one hop further. A password
        (URL or file) or a TLS client certificate counts as credentials.
        """
        parts = urlsplit(self.url)
        if self.password or parts.password:
            return False
        if "ssl_certfile" in dict(parse_qsl(parts.query)):
            return False
        return not is_loopback(parts.hostname or "")

    @property
    def redacted_url(self) -> str:
        """The URL without credentials: what logs and errors may show."""
        return redact(self.url)


def check_url(url: str) -> None:
    """Raise RedisSettingsError unless ``url`` is a usable redis:// or rediss:// URL."""
    # A password holding "/", "?" or "#" (base64 has "/") ends the URL's host part
    # early, so the parser's own errors quoted a piece of it as the "port" or the
    # "database": say so without quoting anything after the scheme.
    if any(c in _userinfo(url) for c in "/?#"):
        raise RedisSettingsError(
            f"--redis URL {redact(url)!r}: the user or password holds '/', '?' or '#'; "
            "percent-encode it, or use --redis-password-file"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RedisSettingsError(f"--redis URL {redact(url)!r} is malformed: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise RedisSettingsError(
            f"--redis URL must start with redis:// or rediss://, got scheme {parts.scheme!r}"
        )
    if not parts.hostname:
        raise RedisSettingsError(f"--redis URL {redact(url)!r} has no host")
    if port == 0:
        raise RedisSettingsError(f"--redis URL {redact(url)!r} has port 0")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise RedisSettingsError(f"--redis URL path must be a database number, got {db!r}")
    _check_query(parts.scheme, parts.query)


def _check_query(scheme: str, query: str) -> None:
    """Admit only the TLS parameters of ``TLS_PARAMETERS``, on rediss://, with usable values.

    Values are not quoted in errors (only file paths): a query may hold a secret.
    """
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "password":
            raise RedisSettingsError(
                "--redis URL: the password goes in the user info "
                "(redis://user:password@host) or in --redis-password-file, not in the query"
            )
        if name not in TLS_PARAMETERS:
            raise RedisSettingsError(
                f"--redis URL query parameter {name!r} is not supported "
                f"(accepted, with rediss:// only: {', '.join(TLS_PARAMETERS)})"
            )
        if scheme != "rediss":
            raise RedisSettingsError(
                f"--redis URL query parameter {name!r} is a TLS setting: use rediss://"
            )
        if name in TLS_FILE_PARAMETERS:
            try:
                with open(value, "rb"):
                    pass
            except OSError as exc:
                raise RedisSettingsError(
                    f"--redis URL {name} file {value!r} cannot be read: {exc.strerror}"
                ) from None
        elif name == "ssl_cert_reqs" and value not in TLS_CERT_REQS:
            raise RedisSettingsError(
                f"--redis URL ssl_cert_reqs must be one of {', '.join(TLS_CERT_REQS)}"
            )
        elif name == "ssl_check_hostname" and value.lower() not in TLS_BOOLEANS:
            raise RedisSettingsError(
                f"--redis URL ssl_check_hostname must be one of {', '.join(TLS_BOOLEANS)}"
            )


def url_has_password(url: str) -> bool:
    return urlsplit(url).password is not None


def _userinfo(url: str) -> str:
    """What stands between ``scheme://`` and the last ``@`` (empty without one)."""
    return url.partition("://")[2].rpartition("@")[0]


def redact(url: str) -> str:
    """``rediss://host:6380/0`` from ``rediss://user:secret@host:6380/0``.

    Everything up to the last ``@`` goes, not just what the URL parser calls the
    user info: with an unencoded "/", "?" or "#" in the password, the parser's
    netloc ends inside the password and the rest of it was shown. The query goes
    too: redis-py takes ``?password=`` there.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparseable URL>"
    where = rest.rpartition("@")[2].partition("?")[0].partition("#")[0]
    return f"{scheme}://{where}"
