"""Health and ranking together, without sockets: an ejected endpoint recovers on real traffic."""

from __future__ import annotations

import random

from router_common.catalog import load_catalog
from router_common.domain import Sort
from router_common.pb import router_pb2
from router_service.core import RouterCore
from router_service.model import HealthState
from router_service.ranking import RankingConfig, RoutingRequest
from tests.conftest import EXAMPLE_CATALOG, FakeClock

MODEL = "zai/glm-4.7"


def attempt(provider: str, at: float, ok: bool) -> router_pb2.Outcome:
    if ok:
        return router_pb2.Outcome(
            model=MODEL,
            provider=provider,
            started_at=at,
            success=True,
            http_status=200,
            ttft_ms=200.0,
            tokens_per_second=90.0,
            output_tokens=20,
            duration_ms=400.0,
        )
    return router_pb2.Outcome(
        model=MODEL,
        provider=provider,
        started_at=at,
        success=False,
        error_class=router_pb2.ERROR_CLASS_SERVER_ERROR,
        http_status=503,
        duration_ms=30.0,
    )


def test_ejected_endpoint_is_probed_first_then_restored() -> None:
    clock = FakeClock()
    no_exploration = RankingConfig(exploration_share=0, exploration_share_unknown=0)
    core = RouterCore(
        load_catalog(EXAMPLE_CATALOG),
        "v1",
        clock,
        random.Random(7),
        ranking_config=no_exploration,
    )
    request = RoutingRequest(model=MODEL, sort=Sort.COST)
    assert core.rank(request).ranked[0].endpoint.provider.name == "deepinfra"  # cheapest

    core.record([attempt("deepinfra", clock.now, ok=False) for _ in range(5)])
    ejected = core.rank(request)
    assert "deepinfra" not in [e.endpoint.provider.name for e in ejected.ranked]
    assert core.health_view(ejected.excluded[0].endpoint.key).state is HealthState.EJECTED

    clock.now += 400  # past the longest first ejection (base 10 s, jittered)
    probe = core.rank(request)
    assert probe.ranked[0].endpoint.provider.name == "deepinfra"
    assert probe.ranked[0].health is HealthState.PROBING
    # The permit is taken: a concurrent request does not probe too.
    concurrent = core.rank(request)
    assert concurrent.ranked[0].endpoint.provider.name != "deepinfra"

    for _ in range(2):  # probe_successes_to_recover
        core.record([attempt("deepinfra", clock.now, ok=True)])
        core.rank(request)
    assert core.rank(request).ranked[0].endpoint.provider.name == "deepinfra"
    key = probe.ranked[0].endpoint.key
    assert core.health_view(key).state is HealthState.HEALTHY
