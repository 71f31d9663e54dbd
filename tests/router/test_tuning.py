"""The tuning file: overrides reach the configs, and every mistake names the file and key."""

from __future__ import annotations

import pytest

from router_service.health import HealthConfig
from router_service.tuning import TuningError, parse_tuning


def test_overrides_keep_other_defaults() -> None:
    health, ranking = parse_tuning(
        "health:\n  degraded_ttft_ratio: 2\n  probe_permits: 2\nranking:\n  exploration_share: 0\n"
    )
    assert health.degraded_ttft_ratio == 2.0 and isinstance(health.degraded_ttft_ratio, float)
    assert health.probe_permits == 2
    assert health.consecutive_failures_to_eject == HealthConfig().consecutive_failures_to_eject
    assert ranking.exploration_share == 0.0


def test_empty_file_is_all_defaults() -> None:
    health, _ = parse_tuning("")
    assert health == HealthConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("routing: {}", "t.yaml: routing: unknown section"),
        ("health: {nope: 1}", "t.yaml: health.nope: unknown key"),
        ("health: {probe_permits: 1.5}", "t.yaml: health.probe_permits: expected a whole number"),
        # Values as JSON writes them and keys as the file writes them (found by the
        # README audit: "got 'fast'", "ranking: RankingConfig.exploration_share out of
        # range: 2.0").
        (
            "health: {degraded_ttft_ratio: fast}",
            't.yaml: health.degraded_ttft_ratio: expected a number, got "fast"',
        ),
        (
            "health: {degraded_ttft_ratio: .inf}",
            't.yaml: health.degraded_ttft_ratio: expected a finite number, got "Infinity"',
        ),
        ("health: {base_ejection_s: -1}", "t.yaml: health.base_ejection_s must be > 0, got -1"),
        (
            "ranking: {exploration_share: 2}",
            "t.yaml: ranking.exploration_share out of range, got 2",
        ),
        ("health: [1]", "t.yaml: health: expected a mapping"),
        ("- 1", "t.yaml: (root): expected a mapping"),
    ],
)
def test_errors_name_file_and_key(text: str, message: str) -> None:
    with pytest.raises(TuningError) as info:
        parse_tuning(text, "t.yaml")
    assert message in str(info.value)
