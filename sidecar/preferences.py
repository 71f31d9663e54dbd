"""Request body → routing preferences, validation, and the body to forward.

Callers already know two conventions for routing options: OpenRouter's
``provider: {...}`` and Vercel AI Gateway's ``providerOptions: {gateway: {...}}``.
Both are accepted, converted to the proto's RoutingPreferences, and stripped
before the body goes upstream (providers reject unknown fields). Everything
here is pure, so the validation rules are tested without sockets.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from router_common.json_text import as_json
from router_common.limits import (
    MAX_FIRST_TOKEN_TIMEOUT_MS,
    MAX_MODEL_ID_LEN,
    MAX_MODELS_PER_REQUEST,
    MAX_NAME_LEN,
    MAX_PROVIDER_LIST,
    MAX_TOKENS,
    MIN_PROVIDER_TIMEOUT_MS,
)
from router_common.pb import router_pb2
from router_common.routing.filters import HardFilters
from router_common.routing.validation import PreferencesError, validate_preferences

#: Sort names from both conventions, mapped to the proto enum.
SORTS: dict[str, int] = {
    "price": router_pb2.SORT_BY_COST,
    "cost": router_pb2.SORT_BY_COST,
    "latency": router_pb2.SORT_BY_TTFT,
    "ttft": router_pb2.SORT_BY_TTFT,
    "throughput": router_pb2.SORT_BY_TPS,
    "tps": router_pb2.SORT_BY_TPS,
}

PERCENTILES: dict[str, int] = {
    "p50": router_pb2.PERCENTILE_P50,
    "p75": router_pb2.PERCENTILE_P75,
    "p90": router_pb2.PERCENTILE_P90,
    "p95": router_pb2.PERCENTILE_P95,
    "p99": router_pb2.PERCENTILE_P99,
}

#: OpenRouter's model variants that are routing shortcuts (``openai/gpt-5:nitro``):
#: the suffix is exactly ``provider.sort`` set to this value.
VARIANT_SORTS: dict[str, str] = {":nitro": "throughput", ":floor": "price"}

#: Fields routing consumes; never forwarded upstream.
ROUTING_FIELDS = ("provider", "providerOptions", "models")

_T = TypeVar("_T")


class RequestError(ValueError):
    """A caller mistake; becomes an OpenAI-shaped 4xx naming ``param``."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        status: int = 400,
        code: str = "invalid_request",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """What the sidecar needs from one chat completion request."""

    model: str
    stream: bool
    #: The app asked for ``stream_options.include_usage`` (the sidecar always asks
    #: the upstream for usage, to measure; the app gets the chunk only if it asked).
    wants_usage: bool
    preferences: router_pb2.RoutingPreferences
    #: The body to forward, routing fields removed (``model`` is set per attempt).
    body: dict[str, Any]
    estimated_input_tokens: int
    max_output_tokens: int
    #: (model, serialized preferences): the ranking cache's key, token estimates
    #: excluded. Built once here because every request looks it up.
    cache_key: tuple[str, bytes]
    #: The preferences' hard filters, re-applied to every ranking before use.
    filters: HardFilters
    #: ``provider.hedge`` / ``providerOptions.gateway.hedge``; None: the sidecar's flag.
    #: Sidecar-local, so not part of ``preferences`` nor of the cache key.
    hedge: bool | None = None
    #: The models to try in order, ``model`` first, when the request named fallback
    #: models (OpenRouter's ``models``, Vercel's ``providerOptions.gateway.models``);
    #: empty otherwise. At most ``MAX_MODELS_PER_REQUEST``.
    models: tuple[str, ...] = ()
    #: ``providerOptions.gateway.providerTimeouts``: first-token timeout per provider,
    #: seconds (None: the request set none). Sidecar-local, not in the cache key.
    provider_timeouts: Mapping[str, float] | None = None
    #: Preference proto paths the request set in Vercel's form only (``preferences.order``
    #: → ``providerOptions.gateway.order``), so a refusal's ``param`` names the field
    #: the request used; every other path is named in OpenRouter's form.
    pref_params: Mapping[str, str] | None = None

    def for_model(self, model: str) -> ParsedRequest:
        """This request as sent to one model of its chain (ranking key and outcomes follow it)."""
        if model == self.model:
            return self
        # Spelled out: dataclasses.replace costs several µs per call, per model, per request.
        return ParsedRequest(
            model,
            self.stream,
            self.wants_usage,
            self.preferences,
            self.body,
            self.estimated_input_tokens,
            self.max_output_tokens,
            (model, self.cache_key[1]),
            self.filters,
            self.hedge,
            self.models,
            self.provider_timeouts,
            self.pref_params,
        )


def _str_list(value: Any, param: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RequestError(f"{param} must be a list of provider names, got {as_json(value)}", param)
    return list(value)


def _bool(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"{param} must be a boolean, got {as_json(value)}", param)
    return value


def _number(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"{param} must be a number, got {as_json(value)}", param)
    if value < 0:
        raise RequestError(f"{param} must not be negative, got {as_json(value)}", param)
    return float(value)


#: A price as OpenRouter's SDKs send it: a decimal string ("1000", "0.5").
_DECIMAL = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")

#: ``max_price`` keys the catalog can enforce (its prices are per million tokens).
_TOKEN_PRICES = ("prompt", "completion")


def _max_price(value: Any) -> dict[str, float]:
    """OpenRouter's ``max_price``: caps on the prompt and completion price, USD per
    million tokens, as numbers or as the decimal strings its SDKs send.

    A cap is a guarantee: one the catalog cannot check (``request``, ``image``,
    ``audio``: it records token prices only) or a misspelt key is a 400 naming it,
    never dropped, or the request could go to a provider above the app's cap.
    """
    if not isinstance(value, dict):
        raise RequestError(
            f"provider.max_price must be an object, got {as_json(value)}", "provider.max_price"
        )
    price: dict[str, float] = {}
    for key, cap in value.items():
        param = f"provider.max_price.{key}"[:200]
        if cap is None:
            continue
        if key not in _TOKEN_PRICES:
            raise RequestError(
                f"{param} cannot be enforced: the catalog records token prices only, "
                f"so max_price takes {' and '.join(_TOKEN_PRICES)} (USD per million tokens)",
                param,
            )
        number = float(cap) if isinstance(cap, str) and _DECIMAL.fullmatch(cap) else cap
        if (
            isinstance(number, bool)
            or not isinstance(number, int | float)
            or not math.isfinite(number)
        ):
            raise RequestError(
                f"{param} must be a number or a decimal string (USD per million tokens), "
                f"got {as_json(cap)}",
                param,
            )
        if number < 0:
            raise RequestError(f"{param} must not be negative, got {as_json(cap)}", param)
        price[key] = float(number)
    return price


#: OpenRouter's ``sort.partition``: "model" (its default, and what the sidecar does:
#: a fallback model's endpoints follow the primary's) or "none" (all models' endpoints
#: sorted together; not honoured, the models stay in their order: no filter is lost).
PARTITIONS = ("model", "none")


def _sort(value: Any, param: str) -> int | None:
    """A sort name, or OpenRouter's ``{by, partition}`` object (both optional there:
    no ``by`` is no sort). None: no sort asked for."""
    if isinstance(value, dict):
        partition = value.get("partition")
        if partition is not None and partition not in PARTITIONS:
            raise RequestError(
                f"{param}.partition must be one of {as_json(PARTITIONS)}, got {as_json(partition)}",
                f"{param}.partition",
            )
        value = value.get("by")
        param += ".by"
        if value is None:
            return None
    if not isinstance(value, str) or value.lower() not in SORTS:
        raise RequestError(
            f"{param} must be one of {as_json(sorted(SORTS))}, got {as_json(value)}", param
        )
    return SORTS[value.lower()]


def _threshold(value: Any, param: str) -> tuple[float, int | None] | None:
    """A number, or OpenRouter's percentile cutoffs ``{p50: x, p90: y}`` (each optional
    and nullable there; the percentile is returned too). None: no cutoff given.

    The router judges soft thresholds at one percentile per request, so one
    non-null cutoff is honoured; several are a 400 naming the field (README).
    """
    if not isinstance(value, dict):
        return _number(value, param), None
    unknown = [k for k in value if k not in PERCENTILES]
    if unknown:
        raise RequestError(
            f"{param} must be a number or one of {{{'|'.join(PERCENTILES)}: x}}, "
            f"got {as_json(value)}",
            param,
        )
    cutoffs = [(k, v) for k, v in value.items() if v is not None]
    if not cutoffs:
        return None
    if len(cutoffs) > 1:
        raise RequestError(
            f"{param} takes one percentile cutoff here (soft thresholds are judged at one "
            f"percentile per request), got {as_json(value)}",
            param,
        )
    key, inner = cutoffs[0]
    return _number(inner, f"{param}.{key}"), PERCENTILES[key]


@dataclass(slots=True)
class _Prefs:
    """Normalised options from one convention, with the param path of each, for conflicts."""

    values: dict[str, Any]
    params: dict[str, str]


def _openrouter(block: Any) -> _Prefs:
    if not isinstance(block, dict):
        raise RequestError(f"provider must be an object, got {as_json(block)}", "provider")
    out = _Prefs({}, {})

    def put(name: str, key: str, value: Any) -> None:
        out.values[name] = value
        out.params[name] = f"provider.{key}"

    for key in ("order", "only", "ignore"):
        if block.get(key) is not None:
            put(key, key, _str_list(block[key], f"provider.{key}"))
    if block.get("sort") is not None:
        sort = _sort(block["sort"], "provider.sort")
        if sort is not None:
            put("sort", "sort", sort)
    if block.get("zdr") is not None:
        put("zdr", "zdr", _bool(block["zdr"], "provider.zdr"))
    if block.get("allow_fallbacks") is not None:
        put(
            "allow_fallbacks",
            "allow_fallbacks",
            _bool(block["allow_fallbacks"], "provider.allow_fallbacks"),
        )
    if block.get("max_price") is not None:
        put("max_price", "max_price", _max_price(block["max_price"]))
    for key, name in (
        ("preferred_max_latency", "max_ttft"),
        ("preferred_min_throughput", "min_tps"),
    ):
        if block.get(key) is not None:
            threshold = _threshold(block[key], f"provider.{key}")
            if threshold is not None:
                put(name, key, threshold)
    collection = block.get("data_collection")
    if collection is not None:
        if collection not in ("allow", "deny"):
            raise RequestError(
                f'provider.data_collection must be "allow" or "deny", got {as_json(collection)}',
                "provider.data_collection",
            )
        if collection == "deny":
            out.values["data_collection_deny"] = True
            out.params["data_collection_deny"] = "provider.data_collection"
    return out


def _vercel(block: Any) -> _Prefs:
    if not isinstance(block, dict):
        raise RequestError(
            f"providerOptions must be an object, got {as_json(block)}", "providerOptions"
        )
    gateway = block.get("gateway")
    out = _Prefs({}, {})
    if gateway is None:
        return out
    if not isinstance(gateway, dict):
        raise RequestError(
            f"providerOptions.gateway must be an object, got {as_json(gateway)}",
            "providerOptions.gateway",
        )
    base = "providerOptions.gateway."
    for key in ("order", "only"):
        if gateway.get(key) is not None:
            out.values[key] = _str_list(gateway[key], base + key)
            out.params[key] = base + key
    if gateway.get("sort") is not None:
        sort = _sort(gateway["sort"], base + "sort")
        if sort is not None:
            out.values["sort"] = sort
            out.params["sort"] = base + "sort"
    if gateway.get("zeroDataRetention") is not None:
        out.values["zdr"] = _bool(gateway["zeroDataRetention"], base + "zeroDataRetention")
        out.params["zdr"] = base + "zeroDataRetention"
    if gateway.get("disallowPromptTraining") is not None:
        param = base + "disallowPromptTraining"
        if _bool(gateway["disallowPromptTraining"], param):
            out.values["no_training"] = True
            out.params["no_training"] = param
    return out


#: Preference names of ``_Prefs`` → the proto path ``validate_preferences`` names.
_PROTO_PATHS = {
    "order": "preferences.order",
    "only": "preferences.only",
    "ignore": "preferences.ignore",
    "sort": "preferences.sort",
    "zdr": "preferences.zero_data_retention",
}


def merge_preferences(
    body: dict[str, Any], default_sort: str | None = None, default_zdr: bool = False
) -> router_pb2.RoutingPreferences:
    """Both conventions → one RoutingPreferences; a disagreement is a 400 naming both fields."""
    return _merge(body, default_sort, default_zdr)[0]


def _merge(
    body: dict[str, Any],
    default_sort: str | None,
    default_zdr: bool,
    variant: _Prefs | None = None,
) -> tuple[router_pb2.RoutingPreferences, dict[str, str]]:
    """``merge_preferences``, and the proto paths set in Vercel's form only → their field.

    ``variant``: the sort a model suffix (``:nitro``) asks for, one more source that
    must agree with the others like they must agree with each other.
    """
    sources = []
    if body.get("provider") is not None:
        sources.append(_openrouter(body["provider"]))
    if body.get("providerOptions") is not None:
        sources.append(_vercel(body["providerOptions"]))
    if variant is not None:
        sources.append(variant)
    merged: dict[str, Any] = {}
    for i, a in enumerate(sources):
        for b in sources[i + 1 :]:
            for name in a.values.keys() & b.values.keys():
                if a.values[name] != b.values[name]:
                    raise RequestError(
                        f"{a.params[name]} conflicts with {b.params[name]}; "
                        "give one or make them agree",
                        f"{a.params[name]},{b.params[name]}",
                    )
    for src in sources:
        merged.update(src.values)
    vercel_only = {
        _PROTO_PATHS[name]: param
        for src in sources
        for name, param in src.params.items()
        if param.startswith("providerOptions.")
        and name in _PROTO_PATHS
        and not any(name in other.values for other in sources if other is not src)
    }

    prefs = router_pb2.RoutingPreferences()
    sort = merged.get("sort")
    if sort is None and default_sort:
        sort = SORTS[default_sort.lower()]
    if sort is not None:
        prefs.sort = sort
    prefs.order.extend(merged.get("order", []))
    prefs.only.extend(merged.get("only", []))
    prefs.ignore.extend(merged.get("ignore", []))
    # OpenRouter's data_collection "deny" and Vercel's disallowPromptTraining ask for
    # providers that keep (or train on) no prompt; the catalog records zero data
    # retention (the stronger promise, which Vercel documents as implying no training)
    # and nothing weaker, so both are enforced as zero data retention, never dropped
    # like an unknown key.
    prefs.zero_data_retention = (
        bool(merged.get("zdr", default_zdr))
        or bool(merged.get("data_collection_deny"))
        or bool(merged.get("no_training"))
    )
    price = merged.get("max_price")
    if price:
        if "prompt" in price:
            prefs.max_price.input_per_million = price["prompt"]
        if "completion" in price:
            prefs.max_price.output_per_million = price["completion"]
    if "max_ttft" in merged:
        seconds, pct = merged["max_ttft"]
        prefs.preferred_max_ttft_ms = seconds * 1000.0
        if pct is not None:
            prefs.percentile = pct
    if "min_tps" in merged:
        tps, pct = merged["min_tps"]
        prefs.preferred_min_tps = tps
        if pct is not None and not prefs.percentile:
            prefs.percentile = pct
    if "allow_fallbacks" in merged:
        prefs.allow_fallbacks = merged["allow_fallbacks"]
    return prefs, vercel_only


def message_text_chars(messages: list[Any]) -> int:
    """Characters of text in chat messages (string content or text parts); junk is skipped."""
    chars = 0
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
    return chars


def _estimate_input_tokens(messages: list[Any]) -> int:
    """≈ chars/4 of the message text: enough for the router's cost estimate."""
    return (message_text_chars(messages) + 3) // 4


#: Vercel's privacy options where the AI SDK puts them for a provider named ``gateway``
#: (spread at the top level of the body). Forwarded, they would reach a provider that
#: does not read them, and the request would go wherever it ranks, keeping data the app
#: asked to be kept nowhere: a 400 instead. Other misplaced options (``order``) only
#: change the order, and are forwarded as any unknown field is.
_MISPLACED_PRIVACY = ("zeroDataRetention", "disallowPromptTraining")


def parse_request(
    body: Any, default_sort: str | None = None, default_zdr: bool = False
) -> ParsedRequest:
    """Validate a chat completion body and split routing options from what goes upstream."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    if body.get("route") not in (None, "fallback"):
        raise RequestError(
            f'route must be "fallback" (OpenRouter\'s older switch for models), '
            f"got {as_json(body['route'])}",
            "route",
        )
    model = body.get("model")
    fallback_models = _models_option(body)
    if model is None and fallback_models:
        model = fallback_models[0]  # `models` alone: its first is the primary
    if model is None:
        raise RequestError("you must provide a model parameter", "model")
    if not isinstance(model, str) or not model.strip():
        raise RequestError("model must be a non-empty string", "model")
    model, fallback_models, variant = _model_variants(
        model,
        fallback_models,
        "model" if body.get("model") is not None else _models_param(body),
        _models_param(body),
    )
    if len(model) > MAX_MODEL_ID_LEN:
        # The router's bound on ``model``, checked here so the answer is this 400
        # whichever source ranks (the fallback catalog would call it unknown).
        raise RequestError(
            f"model must be a model id of 1..{MAX_MODEL_ID_LEN} characters, got {as_json(model)}",
            "model",
        )
    chain: tuple[str, ...] = ()
    if fallback_models:
        chain = tuple(dict.fromkeys((model, *fallback_models)))  # in order, each once
        if len(chain) > MAX_MODELS_PER_REQUEST:
            raise RequestError(
                f"model and models name {len(chain)} distinct models; "
                f"at most {MAX_MODELS_PER_REQUEST}",
                "models",
            )
        if len(chain) == 1:
            chain = ()
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages")
    if not all(isinstance(m, dict) for m in messages):
        raise RequestError("each message must be an object", "messages")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    _bool(stream, "stream")
    max_out = 0
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RequestError(f"{key} must be a non-negative integer, got {as_json(value)}", key)
        if value > MAX_TOKENS:  # the router's bound on the estimate: same 400 from every source
            raise RequestError(f"{key} must be at most {MAX_TOKENS}, got {as_json(value)}", key)
        max_out = max_out or value
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise RequestError("stream_options must be an object", "stream_options")
    if isinstance(so, dict) and so.get("include_usage") is not None:
        # Checked here because the sidecar overwrites it upstream (it always asks for
        # usage): a provider never sees the app's value, so it cannot refuse a bad one.
        _bool(so["include_usage"], "stream_options.include_usage")
    for key in _MISPLACED_PRIVACY:
        if key in body:
            raise RequestError(
                f"{key} at the top level of the body is not read: it is a routing option, "
                f"written providerOptions.gateway.{key}",
                key,
            )
    pref_params: Mapping[str, str] | None = None
    if body.get("provider") is None and body.get("providerOptions") is None and variant is None:
        prefs, prefs_key, filters = _default_preferences(default_sort, default_zdr)
    else:
        prefs, pref_params = _merge(body, default_sort, default_zdr, variant)
        try:  # the router's own rules, so the answer does not depend on the ranking source
            validate_preferences(prefs)
        except PreferencesError as exc:
            raise invalid_preferences(exc, pref_params) from None
        prefs_key = prefs.SerializeToString(deterministic=True)
        filters = HardFilters.from_preferences(prefs)
    hedge = _hedge_option(body)
    timeouts = _provider_timeouts_option(body)
    if any(k in body for k in ROUTING_FIELDS):
        body = {k: v for k, v in body.items() if k not in ROUTING_FIELDS}
    if "route" in body:  # read here, never forwarded: no provider's API knows it
        body = {k: v for k, v in body.items() if k != "route"}
    return ParsedRequest(
        model=model,
        stream=stream,
        wants_usage=stream and isinstance(so, dict) and so.get("include_usage") is True,
        preferences=prefs,
        body=body,
        estimated_input_tokens=_estimate_input_tokens(messages),
        max_output_tokens=max_out,
        cache_key=(model, prefs_key),
        filters=filters,
        hedge=hedge,
        models=chain,
        provider_timeouts=timeouts,
        pref_params=pref_params,
    )


#: Proto paths of the routing preferences → the request field an OpenRouter-style body uses.
_REQUEST_PARAMS = {
    "preferences.max_price.input_per_million": "provider.max_price.prompt",
    "preferences.max_price.output_per_million": "provider.max_price.completion",
    "preferences.preferred_max_ttft_ms": "provider.preferred_max_latency",
    "preferences.preferred_min_tps": "provider.preferred_min_throughput",
}


def invalid_preferences(
    exc: PreferencesError, pref_params: Mapping[str, str] | None = None
) -> RequestError:
    """The 400 for preferences the router's rules refuse, naming the request's parameter
    (``pref_params``: ``ParsedRequest.pref_params``, the fields set in Vercel's form)."""
    param = (pref_params or {}).get(exc.field) or _request_param(exc.field)
    return RequestError(str(exc), param, 400, "invalid_routing_preferences")


def _request_param(proto_field: str) -> str:
    return _REQUEST_PARAMS.get(proto_field, proto_field.replace("preferences.", "provider.", 1))


def _gateway(body: dict[str, Any]) -> dict[str, Any] | None:
    options = body.get("providerOptions")
    gateway = options.get("gateway") if isinstance(options, dict) else None
    return gateway if isinstance(gateway, dict) else None


def _model_list(value: Any, param: str) -> list[str]:
    """A ``models`` list: 1..MAX_MODELS_PER_REQUEST distinct model ids (checked before use)."""
    if not isinstance(value, list) or not value:
        raise RequestError(
            f"{param} must be a non-empty list of model ids, got {as_json(value)}", param
        )
    if len(value) > MAX_MODELS_PER_REQUEST:
        raise RequestError(
            f"{param} lists {len(value)} models; at most {MAX_MODELS_PER_REQUEST}", param
        )
    for item in value:
        if not isinstance(item, str) or not item.strip() or len(item) > MAX_MODEL_ID_LEN:
            raise RequestError(
                f"{param} entries must be model ids of 1..{MAX_MODEL_ID_LEN} characters, "
                f"got {as_json(item)}",
                param,
            )
    if len(set(value)) != len(value):
        twice = next(item for i, item in enumerate(value) if item in value[:i])
        raise RequestError(f"{param} lists {as_json(twice)} more than once", param)
    return list(value)


def _models_option(body: dict[str, Any]) -> list[str]:
    """Fallback models from either convention; both given and different is a 400 naming both."""
    found: list[tuple[str, list[str]]] = []
    if body.get("models") is not None:
        found.append(("models", _model_list(body["models"], "models")))
    gateway = _gateway(body)
    if gateway is not None and gateway.get("models") is not None:
        param = "providerOptions.gateway.models"
        found.append((param, _model_list(gateway["models"], param)))
    return _agreeing(found) or []


def _models_param(body: dict[str, Any]) -> str:
    """The field the request wrote its fallback models in (both given agree, or were refused)."""
    return "models" if body.get("models") is not None else "providerOptions.gateway.models"


def _model_variants(
    model: str, fallback_models: list[str], model_param: str, models_param: str
) -> tuple[str, list[str], _Prefs | None]:
    """``model`` and ``models`` without OpenRouter's ``:nitro`` / ``:floor`` suffixes, and
    the sort they ask for (None: no suffix).

    The suffix is OpenRouter's shortcut for ``provider.sort`` (throughput, price); kept,
    it made the id one the catalog does not list (a 404 for a documented form). The
    preferences apply to every model of a request here, so the suffixes of one request
    must agree, as must ``provider.sort``; a disagreement is a 400 naming both fields,
    as the request spelled them (``model_param`` is the fallback list's field when the
    request sent no ``model``).
    """
    found: list[tuple[str, str]] = []  # (param, sort name)

    def strip(entry: str, param: str) -> str:
        for suffix, sort in VARIANT_SORTS.items():
            if entry.endswith(suffix) and len(entry) > len(suffix):
                found.append((param, sort))
                return entry[: -len(suffix)]
        return entry

    model = strip(model, model_param)
    fallback_models = [strip(m, models_param) for m in fallback_models]
    if not found:
        return model, fallback_models, None
    for param, sort in found[1:]:
        if sort != found[0][1]:
            names = f"{found[0][0]} and {param} name" if param != found[0][0] else f"{param} names"
            raise RequestError(
                f"{names} model variants that sort differently "
                f"({as_json(found[0][1])}, {as_json(sort)}); give one",
                f"{found[0][0]},{param}" if param != found[0][0] else param,
            )
    param, sort = found[0]
    return model, fallback_models, _Prefs({"sort": SORTS[sort]}, {"sort": param})


def _timeout_ms(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"{param} must be a number of milliseconds, got {as_json(value)}", param)
    if not (MIN_PROVIDER_TIMEOUT_MS <= value <= MAX_FIRST_TOKEN_TIMEOUT_MS):
        raise RequestError(
            f"{param} must be between {MIN_PROVIDER_TIMEOUT_MS:g} and "
            f"{MAX_FIRST_TOKEN_TIMEOUT_MS:g} milliseconds, got {as_json(value)}",
            param,
        )
    return float(value)


def _provider_timeouts_option(body: dict[str, Any]) -> dict[str, float] | None:
    """``providerOptions.gateway.providerTimeouts`` as seconds per provider.

    Vercel nests the values under ``byok`` (timeouts for the caller's own
    keys, which is every key a sidecar holds); a flat ``{provider: ms}`` is
    accepted too. One provider given twice with different values is a 400.
    """
    gateway = _gateway(body)
    if gateway is None or gateway.get("providerTimeouts") is None:
        return None
    base = "providerOptions.gateway.providerTimeouts"
    block = gateway["providerTimeouts"]
    if not isinstance(block, dict):
        raise RequestError(
            f"{base} must be an object of provider: milliseconds, got {as_json(block)}", base
        )
    nested = isinstance(block.get("byok"), dict)
    byok: dict[str, Any] = block["byok"] if nested else {}
    if len(block) + len(byok) > MAX_PROVIDER_LIST + 1:  # measured before iterating
        raise RequestError(f"{base} names more than {MAX_PROVIDER_LIST} providers", base)
    entries = [(f"{base}.byok.{k}", k, v) for k, v in byok.items()]
    entries += [(f"{base}.{k}", k, v) for k, v in block.items() if not (k == "byok" and nested)]
    if len(entries) > MAX_PROVIDER_LIST:
        raise RequestError(f"{base} names more than {MAX_PROVIDER_LIST} providers", base)
    out: dict[str, float] = {}
    where: dict[str, str] = {}
    for param, name, value in entries:
        if not name or len(name) > MAX_NAME_LEN:
            raise RequestError(f"{base} provider names must be 1..{MAX_NAME_LEN} characters", base)
        seconds = _timeout_ms(value, param[:300]) / 1000.0
        if name in out and out[name] != seconds:
            raise RequestError(
                f"{where[name]} conflicts with {param}; give one or make them agree",
                f"{where[name]},{param}",
            )
        out[name] = seconds
        where[name] = param
    return out


def _agreeing(found: list[tuple[str, _T]]) -> _T | None:
    """The value given under one convention or both (OpenRouter's, Vercel's); None if
    neither. Both given and different is a 400 naming both fields."""
    if len(found) == 2 and found[0][1] != found[1][1]:
        raise RequestError(
            f"{found[0][0]} conflicts with {found[1][0]}; give one or make them agree",
            f"{found[0][0]},{found[1][0]}",
        )
    return found[0][1] if found else None


def _hedge_option(body: dict[str, Any]) -> bool | None:
    """The request's hedge switch from either convention; disagreeing is a 400 naming both."""
    found: list[tuple[str, bool]] = []
    provider = body.get("provider")
    if isinstance(provider, dict) and provider.get("hedge") is not None:
        found.append(("provider.hedge", _bool(provider["hedge"], "provider.hedge")))
    options = body.get("providerOptions")
    gateway = options.get("gateway") if isinstance(options, dict) else None
    if isinstance(gateway, dict) and gateway.get("hedge") is not None:
        param = "providerOptions.gateway.hedge"
        found.append((param, _bool(gateway["hedge"], param)))
    return _agreeing(found)


@functools.lru_cache(maxsize=32)
def _default_preferences(
    default_sort: str | None, default_zdr: bool
) -> tuple[router_pb2.RoutingPreferences, bytes, HardFilters]:
    """The preferences of a request that gives none, built once per sidecar defaults.

    Most traffic names no routing options, so this skips building and
    serializing a message per request. The message is shared: nothing may
    mutate a ParsedRequest's preferences (they are only read, or copied into
    an RPC).
    """
    prefs = merge_preferences({}, default_sort, default_zdr)
    return prefs, prefs.SerializeToString(deterministic=True), HardFilters.from_preferences(prefs)


def preferences_summary(prefs: router_pb2.RoutingPreferences) -> dict[str, Any]:
    """The preferences as a small JSON-able dict, for the response's routing object."""
    out: dict[str, Any] = {}
    if prefs.sort:
        out["sort"] = router_pb2.SortBy.Name(prefs.sort).removeprefix("SORT_BY_").lower()
    for name in ("order", "only", "ignore"):
        if getattr(prefs, name):
            out[name] = list(getattr(prefs, name))
    if prefs.zero_data_retention:
        out["zero_data_retention"] = True
    if prefs.HasField("allow_fallbacks"):
        out["allow_fallbacks"] = prefs.allow_fallbacks
    return out
