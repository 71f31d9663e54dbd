"""Loads the optional tuning file: health thresholds and ranking knobs.

Kept apart from the catalog because the two change for different reasons and
at different rates (the catalog with the market, tuning with the fleet), and
an operator should be able to override one threshold without copying every
default. Each key maps to a field of ``HealthConfig`` or ``RankingConfig``;
omitted keys keep their documented defaults. Errors name the file and key.

    health:
      consecutive_failures_to_eject: 5
      degraded_ttft_ratio: 2.0
    ranking:
      exploration_share: 0.05
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from router_common.json_text import as_json
from router_service.health import HealthConfig
from router_service.ranking import RankingConfig

_SECTIONS: dict[str, type] = {"health": HealthConfig, "ranking": RankingConfig}


class TuningError(ValueError):
    """A tuning file that cannot be used, naming the file and key."""


def _coerce(source: str, path: str, expected: Any, value: Any) -> Any:
    """Check one value against its dataclass field's type (int, float or bool)."""
    kind = expected if isinstance(expected, type) else type(expected)
    if kind is bool:
        if not isinstance(value, bool):
            raise TuningError(f"{source}: {path}: expected true or false, got {as_json(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TuningError(f"{source}: {path}: expected a number, got {as_json(value)}")
    if kind is int:
        if not float(value).is_integer():
            raise TuningError(f"{source}: {path}: expected a whole number, got {as_json(value)}")
        return int(value)
    if not math.isfinite(value):
        raise TuningError(f"{source}: {path}: expected a finite number, got {as_json(value)}")
    return float(value)


def parse_tuning(text: str, source: str = "<tuning>") -> tuple[HealthConfig, RankingConfig]:
    """Parse tuning YAML; unknown sections or keys and bad values are errors."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise TuningError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise TuningError(f"{source}: (root): expected a mapping with health/ranking sections")
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise TuningError(f"{source}: {unknown[0]}: unknown section (allowed: health, ranking)")
    built = {}
    for section, cls in _SECTIONS.items():
        values = raw.get(section) or {}
        if not isinstance(values, dict):
            raise TuningError(f"{source}: {section}: expected a mapping")
        defaults = cls()
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        kwargs = {}
        for key, value in values.items():
            if key not in fields:
                raise TuningError(f"{source}: {section}.{key}: unknown key")
            kwargs[key] = _coerce(source, f"{section}.{key}", getattr(defaults, key), value)
        try:
            built[section] = cls(**kwargs)
        except ValueError as exc:  # "RankingConfig.x ..." is the file's "ranking.x ..."
            text = str(exc).removeprefix(f"{cls.__name__}.")
            raise TuningError(f"{source}: {section}.{text}") from None
    return built["health"], built["ranking"]


def load_tuning(path: str | Path) -> tuple[HealthConfig, RankingConfig]:
    """Read and validate a tuning file; errors name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TuningError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_tuning(text, str(path))
