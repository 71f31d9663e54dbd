"""The catalog's data: providers, models and their endpoints, immutable once loaded.

Loading and validation live in router_common.catalog; this module only holds
the shapes, so that ranking can depend on them without pulling in YAML.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from router_common.domain import EndpointKey
from router_common.json_text import as_json
from router_common.limits import MAX_MODEL_ID_LEN


@dataclass(frozen=True, slots=True)
class Provider:
    """An upstream host. The router stores the *name* of the key's env var, never the key."""

    name: str
    base_url: str
    #: Empty when the catalog names none: the provider needs no key.
    api_key_env: str = ""
    zero_data_retention: bool = False


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One provider serving one model, at a price in USD per million tokens."""

    model: str
    provider: Provider
    upstream_model: str
    input_price_per_mtok: float
    output_price_per_mtok: float
    #: Built once: the key is looked up on every ranking and every outcome.
    key: EndpointKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", EndpointKey(self.model, self.provider.name))


@dataclass(frozen=True, slots=True)
class Model:
    """A model id (``creator/name``) and the endpoints serving it, in catalog order."""

    id: str
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class Catalog:
    """The whole catalog. ``models`` preserves file order."""

    providers: Mapping[str, Provider]
    models: Mapping[str, Model]

    def endpoint_keys(self) -> frozenset[EndpointKey]:
        return frozenset(e.key for m in self.models.values() for e in m.endpoints)


def unknown_model_message(model: str) -> str:
    """What "this model is not in the catalog" reads like, from the router or the sidecar.

    One wording for both (the router's NOT_FOUND and the sidecar's 404 from its
    fallback catalog), with an overlong id cut so the message stays bounded.
    """
    return f"model {as_json(model, MAX_MODEL_ID_LEN)} is not in the catalog"
