"""Provider API keys: read from this process's environment (or a directory of key
files, ``--provider-keys-dir``), tracked, and fed to the redactor.

Why files: a key in an environment variable is readable in ``/proc/<pid>/environ``
by anything running as the same user, inherited by every child process, and printed
by any "dump the environment" debugging; a Secret mounted as a volume is a file only
the process reading it sees. The variable name the catalog gives (``api_key_env``)
names the file too, so one catalog serves both ways of deploying.

A provider whose key variable is unset cannot be called from this pod. It is
logged once (at start for the fallback catalog's providers, else the first
time a ranking names it), counted in ``router_sidecar_providers_without_key``,
listed by ``/readyz``, and left out of every plan, so it is neither an attempt
nor a reason to fail over. ``/readyz`` stays ready while every model known here
has at least one provider with a key.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping

from router_common.catalog_model import Catalog
from sidecar.redaction import KeyRedactor

log = logging.getLogger("sidecar.keys")

#: Providers and models remembered (names come from the catalog or the router;
#: bounded anyway so a misbehaving router cannot grow this).
_MAX_PROVIDERS = 4096
_MAX_MODELS = 10_000


#: A key file larger than this is not a key (a mistaken mount): treated as unset.
MAX_KEY_FILE_BYTES = 64 * 1024


class EnvThenFiles(Mapping[str, str]):
    """The environment, then ``directory/<name>`` for a name the environment lacks.

    Only single path components are looked up (the catalog's variable names are
    ``[A-Za-z_][A-Za-z0-9_]*``; anything else is not a key's name). An unreadable or
    oversized file is logged once, naming the file, never its content, and counts
    as unset.
    """

    def __init__(self, environ: Mapping[str, str], directory: str) -> None:
        self._environ = environ
        self._dir = directory

    def __getitem__(self, name: str) -> str:
        value = self._environ.get(name)
        if value:
            return value
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise KeyError(name)
        path = os.path.join(self._dir, name)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_KEY_FILE_BYTES + 1)
        except FileNotFoundError:
            raise KeyError(name) from None
        except OSError as exc:
            log.warning(
                "API key file unreadable; treated as unset",
                extra={"api_key_env": name, "path": path, "error": exc.strerror},
            )
            raise KeyError(name) from None
        if len(data) > MAX_KEY_FILE_BYTES:
            log.warning(
                "API key file larger than %d bytes; treated as unset",
                MAX_KEY_FILE_BYTES,
                extra={"api_key_env": name, "path": path},
            )
            raise KeyError(name)
        return data.decode("utf-8", errors="replace")

    def __iter__(self) -> Iterator[str]:
        return iter(self._environ)

    def __len__(self) -> int:
        return len(self._environ)


class ProviderKeys:
    """Which provider has a key here, the keys themselves (for the redactor), and readiness."""

    def __init__(
        self,
        env: Mapping[str, str],
        redactor: KeyRedactor,
        on_missing_count: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._env = env
        self._redactor = redactor
        self._on_missing_count = on_missing_count
        #: Key by variable name; "" when the variable is unset or empty.
        self._keys: dict[str, str] = {}
        #: Provider name -> key variable, for providers without a key.
        self.missing: dict[str, str] = {}
        self._seen: set[str] = set()
        #: Model -> providers serving it (as far as this sidecar has learnt).
        self._models: dict[str, set[str]] = {}

    def key(self, env_name: str) -> str:
        """The key in variable ``env_name`` ("" if unset); read once, then remembered.

        Surrounding whitespace is not part of a key: a key file written with
        ``echo`` ends in a newline, and a newline in the Authorization header
        made aiohttp refuse every request to that provider (a 500 per request).
        A key with a control character inside cannot be sent at all, so it
        counts as unset (logged once, naming the variable, never the value).
        """
        key = self._keys.get(env_name)
        if key is None:
            key = (self._env.get(env_name) or "").strip()
            if any(c < " " or c == "\x7f" for c in key):
                log.warning(
                    "API key variable holds a control character; treated as unset",
                    extra={"api_key_env": env_name},
                )
                key = ""
            if len(self._keys) < _MAX_PROVIDERS:
                self._keys[env_name] = key
            self._redactor.add(key)
        return key

    def note(self, model: str, providers: Iterable[tuple[str, str]]) -> None:
        """Learn ``(provider, key variable)`` pairs serving ``model``; log new keyless ones."""
        served = self._models.get(model)
        if served is None:
            if len(self._models) >= _MAX_MODELS:
                return
            served = self._models[model] = set()
        for name, env_name in providers:
            served.add(name)
            if name in self._seen or len(self._seen) >= _MAX_PROVIDERS:
                continue
            self._seen.add(name)
            if env_name and not self.key(env_name):
                self.missing[name] = env_name
                log.warning(
                    "provider has no API key here; it will not be tried from this sidecar",
                    extra={"provider": name, "api_key_env": env_name},
                )
                self._on_missing_count(len(self.missing))

    def note_catalog(self, catalog: Catalog) -> None:
        for model_id, model in catalog.models.items():
            self.note(
                model_id, ((e.provider.name, e.provider.api_key_env) for e in model.endpoints)
            )

    def models_without_key(self) -> list[str]:
        """Models known here none of whose providers has a key."""
        if not self.missing:
            return []
        return sorted(m for m, names in self._models.items() if names <= self.missing.keys())
