"""The demo's catalog: the example catalog, with every provider pointed at a local fake.

Keeping the example's models, prices and zero-data-retention flags (only the
base URLs change) means the demo ranks exactly what a reader of
``router_common/examples/catalog.yaml`` expects, and the catalog is validated
with the router's own parser before any process starts, so a broken example
fails here with the router's error message rather than as a dead router.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from router_common.catalog import parse_catalog


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """What the demo needs to know about one catalog provider."""

    name: str
    api_key_env: str
    zero_data_retention: bool


def example_catalog_text() -> str:
    """The example catalog shipped with router_service (package data, works when installed)."""
    ref = resources.files("router_common").joinpath("examples/catalog.yaml")
    return ref.read_text(encoding="utf-8")


def derive_catalog(source: Mapping[str, Any], ports: Mapping[str, int]) -> dict[str, Any]:
    """Return a copy of ``source`` whose providers point at ``http://127.0.0.1:PORT/v1``.

    Every provider of the source must have a port: a provider left pointing at
    the real internet would make the demo send requests (with dummy keys) to a
    real company, which must never happen.
    """
    out = copy.deepcopy(dict(source))
    providers = out.get("providers") or {}
    missing = sorted(set(providers) - set(ports))
    if missing:
        raise ValueError(f"no local port for provider(s): {', '.join(missing)}")
    for name, spec in providers.items():
        spec["base_url"] = f"http://127.0.0.1:{ports[name]}/v1"
    return out


def provider_specs(catalog: Mapping[str, Any]) -> list[ProviderSpec]:
    """Providers in catalog order, with their key variable and ZDR flag."""
    specs = []
    for name, spec in (catalog.get("providers") or {}).items():
        specs.append(
            ProviderSpec(
                name=name,
                api_key_env=str(spec.get("api_key_env") or ""),
                zero_data_retention=bool(spec.get("zero_data_retention", False)),
            )
        )
    return specs


def model_providers(catalog: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{model: [provider, ...]}`` in catalog order."""
    return {
        model: [ep["provider"] for ep in (body or {}).get("endpoints", [])]
        for model, body in (catalog.get("models") or {}).items()
    }


def write_catalog(catalog: Mapping[str, Any], directory: Path) -> Path:
    """Validate with the router's parser, then write ``catalog.yaml`` into ``directory``."""
    text = yaml.safe_dump(dict(catalog), sort_keys=False)
    parse_catalog(text, source="demo catalog")  # CatalogError with key path if broken
    path = directory / "catalog.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load_source(path: str | None = None) -> dict[str, Any]:
    """The catalog the demo starts from: ``path`` or the shipped example."""
    text = Path(path).read_text(encoding="utf-8") if path else example_catalog_text()
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("catalog must be a YAML mapping")
    return data
