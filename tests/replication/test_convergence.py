"""Three real replicas on one real Redis: outcomes sent to one show up on all."""

from __future__ import annotations

import time

import pytest

from router_common.pb import router_pb2
from tests.replication.fleet import (
    endpoint_figures,
    health_states,
    metrics_text,
    outcome,
    rank_order,
    send,
)

pytestmark = pytest.mark.timeout(120)


def wait_until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)


def test_outcomes_sent_to_one_replica_reach_all(fleet) -> None:
    a, b, _c = fleet
    # Distinct latencies per provider, a failing one: a clear order and an ejection.
    batch = []
    for _ in range(40):
        batch += [outcome("cerebras", ttft=100.0), outcome("together", ttft=900.0)]
        batch += [outcome("fireworks", ttft=400.0), outcome("deepinfra", ttft=600.0)]
    batch += [outcome("baseten", ok=False) for _ in range(6)]
    ack = send(a, batch)
    assert ack.accepted == len(batch)

    def same_everywhere():
        figures = [endpoint_figures(r) for r in fleet]
        counts = [{p: row["attempts"]["last_1h"] for p, row in f.items()} for f in figures]
        return all(c == counts[0] for c in counts) and counts[0]["cerebras"] == 40

    wait_until(same_everywhere)
    ejected = router_pb2.HEALTH_STATE_EJECTED
    states = [health_states(r) for r in fleet]
    assert states[0]["baseten"] == ejected
    assert states[1] == states[0] and states[2] == states[0]
    orders = [rank_order(r) for r in fleet]
    assert orders[0][:4] == ["cerebras", "fireworks", "deepinfra", "together"]
    assert orders[1] == orders[0] and orders[2] == orders[0]
    p50s = [endpoint_figures(r)["cerebras"]["latency_last_1h"]["p50"] for r in fleet]
    assert p50s[1] == pytest.approx(p50s[0], rel=0.01) and p50s[2] == pytest.approx(
        p50s[0], rel=0.01
    )
    text = metrics_text(b)
    assert "router_redis_connected 1.0" in text
    assert "router_redis_applied_outcomes_total 166.0" in text
    lag = [x for x in text.splitlines() if x.startswith("router_redis_replication_lag_seconds{")]
    assert len(lag) == 2 and all(0 <= float(x.split()[-1]) < 60 for x in lag)
    assert "router_redis_buffered_outcomes 0.0" in text
    assert "router_redis_dropped_outcomes_total 0.0" in text
    assert "router_redis_published_outcomes_total 166.0" in metrics_text(a)
