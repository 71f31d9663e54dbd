"""Configuration of the fake provider: its latency model, failure rates and incidents.

Everything here is plain frozen data so that a test, the demo or a benchmark can
describe a provider's behaviour in one value, compare it, and pass it around
without worrying that the running server mutates it behind its back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

IncidentKind = Literal[
    "fail", "slowdown", "hang", "drop", "refuse", "role_drop", "truncate", "error_event"
]
INCIDENT_KINDS: tuple[str, ...] = (
    "fail",
    "slowdown",
    "hang",
    "drop",
    "refuse",
    "role_drop",
    "truncate",
    "error_event",
)


@dataclass(frozen=True, slots=True)
class Incident:
    """A scripted misbehaviour active in the window ``[start_s, end_s)``.

    Times are seconds since the server started, measured with the server's
    (injectable) clock, so a test can move a fake clock instead of sleeping.
    ``end_s=None`` means "until removed".

    Kinds:
      * ``fail``: answer every completion with ``status`` (an OpenAI error JSON).
      * ``slowdown``: multiply TTFT and the inter-token delay by ``factor``.
      * ``hang``: accept the request and never answer (until the client gives up
        or the server shuts down); for timeout tests.
      * ``drop``: close the connection after ``after_tokens`` content tokens
        were streamed; for "never retry after the first byte" tests.
      * ``refuse``: close the socket without any HTTP response.
      * ``role_drop``: answer 200, send a role-only chunk (no content), then
        close the connection; a stream that breaks before its first token.
      * ``truncate``: answer 200, send a role-only chunk and ``after_tokens``
        content tokens, then end the body cleanly with no ``finish_reason``
        and no ``[DONE]`` (a provider that silently stops).
      * ``error_event``: answer 200, send ``after_tokens`` content tokens, then
        an SSE ``data: {"error": ...}`` event whose message quotes the
        Authorization header it received (as careless providers do), and end.
        With ``status`` 401 the message reads like a refused key.
      * ``fail`` with ``status`` 429 also sends ``Retry-After`` (the config's
        ``retry_after_s``).
    """

    kind: IncidentKind
    start_s: float = 0.0
    end_s: float | None = None
    status: int = 503
    factor: float = 3.0
    after_tokens: int = 0

    def __post_init__(self) -> None:
        if self.kind not in INCIDENT_KINDS:
            raise ValueError(
                f"unknown incident kind {self.kind!r}; expected one of {INCIDENT_KINDS}"
            )
        if self.end_s is not None and self.end_s < self.start_s:
            raise ValueError(f"incident ends ({self.end_s}) before it starts ({self.start_s})")
        if not 100 <= self.status <= 599:
            raise ValueError(f"incident status must be an HTTP status, got {self.status}")
        if not (self.factor > 0 and math.isfinite(self.factor)):
            raise ValueError(f"slowdown factor must be a positive number, got {self.factor}")
        if self.after_tokens < 0:
            raise ValueError(f"after_tokens must be >= 0, got {self.after_tokens}")

    def active_at(self, t: float) -> bool:
        """Whether the incident applies at ``t`` seconds since server start."""
        return self.start_s <= t and (self.end_s is None or t < self.end_s)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, used by the control API."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, now_s: float = 0.0) -> Incident:
        """Build an incident from control-API JSON.

        Accepts either absolute ``start_s``/``end_s`` (seconds since server start)
        or, relative to ``now_s``, ``start_in_s`` (default 0 = now) and
        ``duration_s`` (absent = until removed). This lets a test or the demo
        say "fail with 503 for 5 s, starting now" without knowing the server's
        clock.
        """
        if not isinstance(data, dict):
            raise ValueError("incident must be a JSON object")
        known = {
            "kind",
            "start_s",
            "end_s",
            "status",
            "factor",
            "after_tokens",
            "start_in_s",
            "duration_s",
        }
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown incident fields: {sorted(unknown)}")
        if "kind" not in data:
            raise ValueError("incident needs a 'kind'")
        if "start_s" in data:
            start = float(data["start_s"])
        else:
            start = now_s + float(data.get("start_in_s", 0.0))
        if "end_s" in data:
            end = None if data["end_s"] is None else float(data["end_s"])
        elif data.get("duration_s") is not None:
            end = start + float(data["duration_s"])
        else:
            end = None
        kwargs: dict[str, Any] = {"kind": str(data["kind"]), "start_s": start, "end_s": end}
        if "status" in data:
            kwargs["status"] = int(data["status"])
        if "factor" in data:
            kwargs["factor"] = float(data["factor"])
        if "after_tokens" in data:
            kwargs["after_tokens"] = int(data["after_tokens"])
        return cls(**kwargs)


def parse_incident_spec(spec: str) -> Incident:
    """Parse the CLI's compact incident syntax.

    ``fail:STATUS:T1[:T2]``, ``slowdown:FACTOR:T1[:T2]``, ``drop:AFTER_TOKENS:T1[:T2]``,
    ``hang:T1[:T2]``, ``refuse:T1[:T2]``; times in seconds since start, a missing
    or empty ``T2`` means "until the end". Example: ``fail:503:10:20``.
    """
    parts = spec.strip().split(":")
    kind = parts[0]
    takes_param = {
        "fail": "status",
        "slowdown": "factor",
        "drop": "after_tokens",
        "truncate": "after_tokens",
        "error_event": "after_tokens",
    }
    try:
        if kind in takes_param:
            if len(parts) not in (3, 4):
                raise ValueError
            param: dict[str, Any] = {}
            if kind == "fail":
                param["status"] = int(parts[1])
            elif kind == "slowdown":
                param["factor"] = float(parts[1])
            else:  # drop, truncate, error_event
                param["after_tokens"] = int(parts[1])
            times = parts[2:]
        elif kind in ("hang", "refuse", "role_drop"):
            if len(parts) not in (2, 3):
                raise ValueError
            param = {}
            times = parts[1:]
        else:
            raise ValueError
        start = float(times[0]) if times[0] else 0.0
        end = float(times[1]) if len(times) > 1 and times[1] else None
    except (ValueError, IndexError):
        raise ValueError(
            f"bad incident spec {spec!r}; expected e.g. 'fail:503:10:20', 'slowdown:3:30:60', "
            "'drop:5:0:', 'hang:0:10' or 'refuse:5'"
        ) from None
    return Incident(kind=kind, start_s=start, end_s=end, **param)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class FakeProviderConfig:
    """How one fake provider behaves.

    ``ttft_median_ms``/``ttft_sigma`` parametrise a lognormal TTFT (sigma 0 gives
    a constant), because real provider TTFTs are right-skewed. A
    ``tokens_per_second`` of 0 means "as fast as possible" (no pacing).
    ``served_models`` of ``None`` accepts any model id. ``expected_api_key`` of
    ``None`` disables authentication. ``record_limit`` bounds the in-memory
    record of received requests so a long benchmark cannot exhaust memory.
    """

    name: str = "fake"
    served_models: tuple[str, ...] | None = None
    ttft_median_ms: float = 50.0
    ttft_sigma: float = 0.0
    tokens_per_second: float = 200.0
    error_rate: float = 0.0
    error_status: int = 500
    rate_limit_rate: float = 0.0
    retry_after_s: float = 1.0
    expected_api_key: str | None = field(default=None, repr=False)
    seed: int | None = 0
    incidents: tuple[Incident, ...] = ()
    default_max_tokens: int = 32
    record_limit: int = 10_000
    #: Pause between ``data: [DONE]`` and the end of the HTTP body. Real
    #: providers' chunked terminator often trails [DONE] in its own segment;
    #: this makes that gap long enough for tests to rely on.
    done_to_eof_ms: float = 0.0
    #: Send a stream's whole body in one write once its last token is due, as a
    #: provider with the answer ready (a cache) or a buffering proxy in front of
    #: one does: the client reads every token in one go.
    stream_in_one_write: bool = False

    def __post_init__(self) -> None:
        if self.served_models is not None and not isinstance(self.served_models, tuple):
            object.__setattr__(self, "served_models", tuple(self.served_models))
        if not isinstance(self.incidents, tuple):
            object.__setattr__(self, "incidents", tuple(self.incidents))
        for rate_name in ("error_rate", "rate_limit_rate"):
            rate = getattr(self, rate_name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{rate_name} must be within [0, 1], got {rate}")
        if self.ttft_median_ms < 0 or self.ttft_sigma < 0:
            raise ValueError("ttft_median_ms and ttft_sigma must be >= 0")
        if self.tokens_per_second < 0:
            raise ValueError("tokens_per_second must be >= 0 (0 = unpaced)")
        if not 400 <= self.error_status <= 599:
            raise ValueError(f"error_status must be a 4xx/5xx status, got {self.error_status}")
        if self.retry_after_s < 0:
            raise ValueError("retry_after_s must be >= 0")
        if self.default_max_tokens < 1:
            raise ValueError("default_max_tokens must be >= 1")
        if self.record_limit < 1:
            raise ValueError("record_limit must be >= 1")
        if self.done_to_eof_ms < 0:
            raise ValueError("done_to_eof_ms must be >= 0")
        if not isinstance(self.stream_in_one_write, bool):
            raise ValueError("stream_in_one_write must be true or false")

    def public_dict(self) -> dict[str, Any]:
        """The config as JSON, without the API key (only whether one is required)."""
        return {
            "name": self.name,
            "served_models": list(self.served_models) if self.served_models is not None else None,
            "ttft_median_ms": self.ttft_median_ms,
            "ttft_sigma": self.ttft_sigma,
            "tokens_per_second": self.tokens_per_second,
            "error_rate": self.error_rate,
            "error_status": self.error_status,
            "rate_limit_rate": self.rate_limit_rate,
            "retry_after_s": self.retry_after_s,
            "api_key_required": self.expected_api_key is not None,
            "seed": self.seed,
            "incidents": [i.to_dict() for i in self.incidents],
            "default_max_tokens": self.default_max_tokens,
            "record_limit": self.record_limit,
            "done_to_eof_ms": self.done_to_eof_ms,
            "stream_in_one_write": self.stream_in_one_write,
        }


# Fields that may be changed at runtime through the control API / update_config.
RUNTIME_TUNABLE_FIELDS: frozenset[str] = frozenset(
    {
        "ttft_median_ms",
        "ttft_sigma",
        "tokens_per_second",
        "error_rate",
        "error_status",
        "rate_limit_rate",
        "retry_after_s",
        "default_max_tokens",
        "done_to_eof_ms",
    }
)
