"""Who is calling, and may they? Bearer tokens and client certificates.

The router decides where every LLM call in the fleet goes, so whoever can
report outcomes can steer traffic. Callers are therefore named: a token from
the tokens file (``--auth-tokens``), else the common name of a verified client
certificate (mTLS), else -- only when neither is configured -- the peer's
address. Each caller holds scopes: ``rank`` (RankProviders), ``report``
(RecordOutcome, StreamOutcomes) and ``read`` (ListModels, GetModelEndpoints,
GetHealth, and the HTTP side).

The tokens file reloads when it or any ``token_file`` it names changes (a
Kubernetes Secret volume swaps a symlink; ``stat`` follows it). A file that
does not parse is refused and the previous callers are kept. Tokens are
compared in constant time and never logged, counted or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from router_common.file_stamp import Stamp, file_stamp
from router_common.json_text import as_json
from router_common.limits import MAX_AUTH_CALLERS, MAX_NAME_LEN

log = logging.getLogger(__name__)

Scope = Literal["rank", "report", "read"]
SCOPES: tuple[Scope, ...] = ("rank", "report", "read")

#: The scope each Router method needs.
METHOD_SCOPES: dict[str, Scope] = {
    "RankProviders": "rank",
    "RecordOutcome": "report",
    "StreamOutcomes": "report",
    "ListModels": "read",
    "GetModelEndpoints": "read",
    "GetHealth": "read",
}


class AuthConfigError(ValueError):
    """A tokens file that cannot be used, naming the file and key (never a token)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """An identified caller: its name attributes outcomes and rate limits."""

    name: str
    scopes: frozenset[str]
    #: "token", "certificate" or "peer" (unauthenticated, by address).
    via: str


class Denied(Exception):
    """The call is refused: ``unauthenticated`` (who?) or not (may not)."""

    def __init__(self, unauthenticated: bool, message: str) -> None:
        super().__init__(message)
        self.unauthenticated = unauthenticated


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    #: SHA-256 of the token: every comparison is of 32 bytes, so its time says
    #: nothing about the token's length (compare_digest returns early on a length
    #: mismatch), and the store holds no token to leak in a repr or a dump.
    digest: bytes
    scopes: frozenset[str]


def token_digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def sendable_token(token: str) -> bool:
    """Whether a client can send ``token`` in ``authorization`` metadata at all.

    Why: gRPC refuses a metadata value outside printable ASCII in the client
    ("Illegal header value") before anything is sent, so a token with an accented
    letter or a control character was loaded here and then could never be used
    on gRPC (HTTP Basic, UTF-8, still took it): the caller got errors, the
    router logged nothing.
    """
    return all(" " <= ch <= "~" for ch in token)


def parse_tokens_file(path: str | Path) -> tuple[list[_Entry], list[Path]]:
    """Read the tokens file; returns the callers and every file it depends on."""
    entries, files, _stamps = _parse_stamped(Path(path))
    return entries, files


def _parse_stamped(
    path: Path,
) -> tuple[list[_Entry], list[Path], list[Stamp | None]]:
    """``parse_tokens_file`` and each file's stamp, taken just *before* it was read.

    Why before: stamps taken after the parse recorded a file that was rotated while
    it was being read as already loaded, so a Secret update landing in that instant
    was never picked up (until the next one). Stamped first, such a change shows on
    the next poll."""
    stamps: list[Stamp | None] = []
    source = str(path)
    try:
        stamps.append(file_stamp(path))
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AuthConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError:
        raise AuthConfigError(f"{source}: not valid YAML") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("callers"), dict):
        raise AuthConfigError(f"{source}: callers: expected a mapping of caller names")
    unknown = sorted(set(raw) - {"callers"})
    if unknown:
        raise AuthConfigError(f"{source}: {unknown[0]}: unknown key (allowed: callers)")
    callers = raw["callers"]
    if not callers:
        raise AuthConfigError(f"{source}: callers: at least one caller is required")
    if len(callers) > MAX_AUTH_CALLERS:
        raise AuthConfigError(f"{source}: callers: at most {MAX_AUTH_CALLERS}")
    entries: list[_Entry] = []
    files = [path]
    seen_tokens: set[bytes] = set()
    for name, spec in callers.items():
        where = f"{source}: callers.{name}"
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_LEN:
            raise AuthConfigError(f"{where}: name must be 1..{MAX_NAME_LEN} characters")
        if not isinstance(spec, dict):
            raise AuthConfigError(f"{where}: expected a mapping with token/token_file and scopes")
        extra = sorted(set(spec) - {"token", "token_file", "scopes"})
        if extra:
            raise AuthConfigError(f"{where}.{extra[0]}: unknown key")
        if ("token" in spec) == ("token_file" in spec):
            raise AuthConfigError(f"{where}: exactly one of token or token_file is required")
        if "token" in spec:
            if not isinstance(spec["token"], str):
                raise AuthConfigError(f"{where}.token: expected a string")
            token = spec["token"].strip()
        else:
            if not isinstance(spec["token_file"], str):
                raise AuthConfigError(f"{where}.token_file: expected a path")
            token_path = Path(spec["token_file"])
            if not token_path.is_absolute():
                token_path = path.parent / token_path
            files.append(token_path)
            stamps.append(file_stamp(token_path))
            try:
                # utf-8-sig: a byte order mark (Windows editors) is not part of the token.
                token = token_path.read_text(encoding="utf-8-sig").strip()
            except (OSError, UnicodeDecodeError):
                raise AuthConfigError(
                    f"{where}.token_file: cannot read {as_json(str(token_path))}"
                ) from None
        if len(token) < 8:
            raise AuthConfigError(f"{where}: token must be at least 8 characters")
        if not sendable_token(token):
            raise AuthConfigError(
                f"{where}: token must be printable ASCII (gRPC metadata carries nothing else)"
            )
        digest = token_digest(token.encode())
        if digest in seen_tokens:
            raise AuthConfigError(f"{where}: token is the same as another caller's")
        seen_tokens.add(digest)
        scopes = spec.get("scopes")
        if not isinstance(scopes, list) or not scopes:
            raise AuthConfigError(f"{where}.scopes: expected a list of {', '.join(SCOPES)}")
        for index, scope in enumerate(scopes):
            if scope not in SCOPES:
                raise AuthConfigError(
                    f"{where}.scopes[{index}]: unknown scope {as_json(scope)}"
                    f" (allowed: {as_json(list(SCOPES))})"
                )
        entries.append(_Entry(name, digest, frozenset(scopes)))
    return entries, files, stamps


class TokenStore:
    """The current callers, reloaded when the tokens file (or a token file) changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._entries, self._files, self._stamps = _parse_stamped(self.path)
        self.reloads = 0
        self.refused = 0

    @property
    def names(self) -> list[str]:
        return [e.name for e in self._entries]

    def scopes_of(self, name: str) -> frozenset[str] | None:
        for entry in self._entries:
            if entry.name == name:
                return entry.scopes
        return None

    def maybe_reload(self) -> bool:
        """Re-read when any file changed; a bad file is refused and logged once."""
        stamps = [file_stamp(p) for p in self._files]
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        try:
            entries, files, file_stamps = _parse_stamped(self.path)
        except AuthConfigError as exc:
            self.refused += 1
            log.error(
                "tokens file refused, keeping the previous callers", extra={"error": str(exc)}
            )
            return False
        self._entries, self._files = entries, files
        self._stamps = file_stamps
        self.reloads += 1
        log.info("tokens file loaded", extra={"callers": self.names})
        return True

    def lookup(self, token: bytes) -> _Entry | None:
        """The caller holding ``token``; every entry is compared, digest to digest, so
        the time taken depends on neither the token's length nor where it matched."""
        found = None
        digest = token_digest(token)
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found


def bearer_token(header: str | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` value, else None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    # aiohttp decodes header bytes that are not UTF-8 as surrogates; a plain
    # encode() raised on them (a 500 and a traceback per request). Back to the
    # bytes sent: they match no token, so the caller gets the usual 401.
    return value.strip().encode("utf-8", "surrogateescape")


def one_authorization(values: Sequence[object]) -> str | None:
    """The one ``authorization`` value a call sent; Denied (unauthenticated) for several.

    Why: with two entries the first was used, so a good token followed by a bad one
    passed and the reverse did not, and a proxy that adds its own credentials beside
    a client's decided nothing predictable. ``Authorization`` is a singleton field
    (RFC 9110 section 5.3), so more than one is refused, whatever they hold.
    """
    if len(values) > 1:
        raise Denied(True, f"send one authorization entry, got {len(values)}")
    value = values[0] if values else None
    return value if isinstance(value, str) else None


class Authenticator:
    """Names the caller of one request and checks its scope."""

    def __init__(self, tokens: TokenStore | None, mtls: bool) -> None:
        self.tokens = tokens
        self.mtls = mtls

    @property
    def enabled(self) -> bool:
        return self.tokens is not None or self.mtls

    @property
    def generation(self) -> int:
        """Changes whenever the callers do (a tokens file reload): a long-lived
        stream admitted under older callers is checked again (see grpc_api)."""
        return self.tokens.reloads if self.tokens is not None else 0

    def identify(
        self,
        authorization: str | None,
        certificate_names: Sequence[str],
        peer: str,
    ) -> Caller:
        """Who is calling: token, else certificate, else (auth off) the peer. Raises Denied."""
        if not self.enabled:
            # Nothing to check against: what a client sends (a proxy's Basic
            # credentials, say) is ignored, as on the HTTP side, not refused.
            return Caller(peer_host(peer), frozenset(SCOPES), "peer")
        token = bearer_token(authorization)
        if self.tokens is not None and token is not None:
            entry = self.tokens.lookup(token)
            if entry is None:
                raise Denied(True, "the bearer token is not valid")
            return Caller(entry.name, entry.scopes, "token")
        if authorization and token is None:
            raise Denied(True, 'authorization must be "Bearer <token>"')
        if self.mtls and certificate_names:
            name = certificate_names[0][:MAX_NAME_LEN]
            scopes = self.tokens.scopes_of(name) if self.tokens is not None else None
            return Caller(name, scopes if scopes is not None else frozenset(SCOPES), "certificate")
        raise Denied(True, 'missing credentials: send "authorization: Bearer <token>"')

    @staticmethod
    def require(caller: Caller, scope: str, what: str) -> None:
        if scope not in caller.scopes:
            raise Denied(
                False, f"caller {as_json(caller.name)} lacks the {as_json(scope)} scope for {what}"
            )


def peer_host(peer: str) -> str:
    """``ipv4:10.0.0.7:51234`` → ``10.0.0.7``: one unauthenticated caller per host, not per port."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = rest.rpartition(":")[0]
        return host.strip("[]") or rest
    return peer or "unknown"


def certificate_names(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """Common name, then subject alternative names, of a verified client certificate."""
    names: list[str] = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth_context.get(key, ()):
            text = value.decode("utf-8", "replace")
            if text and text not in names:
                names.append(text)
    return names
