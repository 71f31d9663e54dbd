"""Loads and validates the catalog YAML.

A bad catalog must fail loudly at start (and be refused on reload, keeping the
previous one) with an error an operator can act on: the file, the key path and
what was expected. So validation is hand-rolled against the small schema below
rather than left to whatever exception the first bad lookup would raise.

    providers:
      groq:
        base_url: https://api.groq.com/openai/v1
        api_key_env: GROQ_API_KEY          # optional: omit when no key is needed
        zero_data_retention: true          # optional, default false
    models:
      zai/glm-4.7:
        endpoints:
          - provider: groq
            upstream_model: glm-4.7        # optional, default: the model id
            input_price_per_million: 0.6
            output_price_per_million: 2.2
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import yaml

from router_common.catalog_model import Catalog, Endpoint, Model, Provider
from router_common.limits import (
    MAX_MODEL_ID_LEN,
    MAX_MODELS,
    MAX_NAME_LEN,
    MAX_PRICE_PER_MILLION,
    MAX_PROVIDERS,
)

# Bounds (router_common.limits) keep a typo (or a hostile file) from producing
# absurd state; the same name lengths bound what callers may send.
_N = MAX_NAME_LEN - 1
_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{_N}}}$")
_MODEL_ID = re.compile(
    rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{_N}}}/[A-Za-z0-9][A-Za-z0-9._:-]{{0,{_N}}}$"
)
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class CatalogError(ValueError):
    """A catalog file that cannot be used, with where and why."""

    def __init__(self, source: str, path: str, problem: str) -> None:
        self.source = source
        self.key_path = path
        self.problem = problem
        super().__init__(f"{source}: {path}: {problem}")


class _Validator:
    """Walks the parsed YAML, raising CatalogError at the first problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> CatalogError:
        return CatalogError(self.source, path, problem)

    def mapping(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {_type_name(value)}")
        return value

    def keys(
        self, value: dict[str, Any], path: str, required: set[str], optional: set[str]
    ) -> None:
        missing = sorted(required - value.keys())
        if missing:
            raise self.fail(path, f"missing required key {missing[0]!r}")
        unknown = sorted(str(k) for k in value.keys() - required - optional)
        if unknown:
            allowed = ", ".join(sorted(required | optional))
            raise self.fail(f"{path}.{unknown[0]}", f"unknown key (allowed: {allowed})")

    def string(self, value: Any, path: str, pattern: re.Pattern[str] | None = None) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(path, f"expected a non-empty string, got {_type_name(value)}")
        if pattern is not None and not pattern.match(value):
            raise self.fail(path, f"{value!r} does not match {pattern.pattern}")
        return value

    def url(self, value: Any, path: str) -> str:
        """A provider's base URL, which must hold no credentials.

        Keys live only in the sidecar's environment (``api_key_env``). A
        ``user:password@`` or a ``?key=`` in the URL would put one in the router,
        in every ``RankProviders`` answer to every sidecar, and in the sidecar's
        requests and errors; so such a URL is refused, and the message never
        repeats the URL (it would repeat the secret).
        """
        text = self.string(value, path)
        if "@" in text or "?" in text or "#" in text:
            raise self.fail(
                path,
                "must not hold a user, password, query or fragment (credentials "
                "belong in the variable api_key_env names; the URL is not repeated here)",
            )
        if not text.startswith(("http://", "https://")) or len(text) > 2048:
            raise self.fail(path, f"expected an http(s) URL, got {text!r}")
        return text.rstrip("/")

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {_type_name(value)}")
        return value

    def price(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(
                path, f"expected a number (USD per million tokens), got {_type_name(value)}"
            )
        price = float(value)
        if not math.isfinite(price) or price < 0 or price > MAX_PRICE_PER_MILLION:
            raise self.fail(
                path, f"expected a price in [0, {MAX_PRICE_PER_MILLION:g}], got {value}"
            )
        return price


def _type_name(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def parse_catalog(text: str, source: str = "<catalog>") -> Catalog:
    """Parse and validate catalog YAML text; ``source`` names it in errors."""
    check = _Validator(source)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(document)"
        raise CatalogError(source, where, f"not valid YAML: {exc}") from None
    root = check.mapping(raw, "(root)")
    check.keys(root, "(root)", {"providers", "models"}, set())
    providers = _parse_providers(check, root["providers"])
    models = _parse_models(check, root["models"], providers)
    return Catalog(providers=providers, models=models)


def _section(check: _Validator, raw: Any, name: str, limit: int) -> dict[str, Any]:
    """A top-level mapping that must hold at least one and at most ``limit`` entries."""
    section = check.mapping(raw, name)
    if not section:
        raise check.fail(name, f"expected at least one {name.removesuffix('s')}")
    if len(section) > limit:
        raise check.fail(name, f"at most {limit} {name}")
    return section


def _parse_providers(check: _Validator, raw: Any) -> dict[str, Provider]:
    section = _section(check, raw, "providers", MAX_PROVIDERS)
    providers: dict[str, Provider] = {}
    for name, body in section.items():
        path = f"providers.{name}"
        check.string(name, path, _NAME)
        fields = check.mapping(body, path)
        check.keys(fields, path, {"base_url"}, {"api_key_env", "zero_data_retention"})
        # No api_key_env: the provider needs no key (a local model server, a fake
        # provider); the sidecar then sends no Authorization header.
        api_key_env = fields.get("api_key_env")
        providers[name] = Provider(
            name=name,
            base_url=check.url(fields["base_url"], f"{path}.base_url"),
            api_key_env=""
            if api_key_env is None
            else check.string(api_key_env, f"{path}.api_key_env", _ENV_VAR),
            zero_data_retention=check.boolean(
                fields.get("zero_data_retention", False), f"{path}.zero_data_retention"
            ),
        )
    return providers


def _parse_models(check: _Validator, raw: Any, providers: dict[str, Provider]) -> dict[str, Model]:
    section = _section(check, raw, "models", MAX_MODELS)
    models: dict[str, Model] = {}
    for model_id, body in section.items():
        path = f"models.{model_id}"
        check.string(model_id, path, _MODEL_ID)
        if len(model_id) > MAX_MODEL_ID_LEN:
            raise check.fail(path, f"model ids are at most {MAX_MODEL_ID_LEN} characters")
        fields = check.mapping(body, path)
        check.keys(fields, path, {"endpoints"}, set())
        entries = fields["endpoints"]
        if not isinstance(entries, list) or not entries:
            raise check.fail(f"{path}.endpoints", "expected a non-empty list of endpoints")
        endpoints: list[Endpoint] = []
        seen: set[str] = set()
        for index, entry in enumerate(entries):
            endpoint = _parse_endpoint(
                check, entry, f"{path}.endpoints[{index}]", model_id, providers
            )
            if endpoint.provider.name in seen:
                raise check.fail(
                    f"{path}.endpoints[{index}].provider",
                    f"provider {endpoint.provider.name!r} is listed twice for this model",
                )
            seen.add(endpoint.provider.name)
            endpoints.append(endpoint)
        models[model_id] = Model(id=model_id, endpoints=tuple(endpoints))
    return models


def _parse_endpoint(
    check: _Validator, raw: Any, path: str, model_id: str, providers: dict[str, Provider]
) -> Endpoint:
    fields = check.mapping(raw, path)
    check.keys(
        fields,
        path,
        {"provider", "input_price_per_million", "output_price_per_million"},
        {"upstream_model"},
    )
    provider_name = check.string(fields["provider"], f"{path}.provider")
    if provider_name not in providers:
        known = ", ".join(sorted(providers))
        raise check.fail(f"{path}.provider", f"unknown provider {provider_name!r} (known: {known})")
    upstream = fields.get("upstream_model", model_id)
    return Endpoint(
        model=model_id,
        provider=providers[provider_name],
        upstream_model=check.string(upstream, f"{path}.upstream_model"),
        input_price_per_mtok=check.price(
            fields["input_price_per_million"], f"{path}.input_price_per_million"
        ),
        output_price_per_mtok=check.price(
            fields["output_price_per_million"], f"{path}.output_price_per_million"
        ),
    )


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate a catalog file; errors name the file."""
    return read_catalog(path)[0]


def read_catalog_bytes(path: str | Path) -> bytes:
    """The file's bytes, or CatalogError naming it (``(file)``: missing, unreadable)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CatalogError(str(path), "(file)", f"cannot read: {exc.strerror or exc}") from None


def parse_catalog_bytes(data: bytes, source: str) -> Catalog:
    """``parse_catalog`` of a file's bytes, which must be UTF-8."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CatalogError(source, "(file)", "not UTF-8 text") from None
    return parse_catalog(text, source)


def read_catalog(path: str | Path) -> tuple[Catalog, str]:
    """The catalog and its version, both from one read of the file.

    Why one read: a ConfigMap update can swap the file between two reads, and a
    version hashed from one read beside a catalog parsed from another would name,
    in every RankProviders answer, a catalog that is not the one ranking."""
    data = read_catalog_bytes(path)
    return parse_catalog_bytes(data, str(path)), version_of_bytes(data)


def version_of_bytes(data: bytes) -> str:
    """A short content hash, so clients and logs can tell which catalog ranked them."""
    return hashlib.sha256(data).hexdigest()[:12]


def catalog_version(path: str | Path) -> str:
    """``version_of_bytes`` of a file (a second read: use ``read_catalog`` to load one)."""
    return version_of_bytes(Path(path).read_bytes())
