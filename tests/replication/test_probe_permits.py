"""Half-open probes are fleet-wide: three replicas let one probe through, not three."""

from __future__ import annotations

import pytest

from router_common.pb import router_pb2
from tests.replication.fleet import RouterProcess, health_states, outcome, rank_order, send
from tests.replication.test_convergence import wait_until
from tests.replication.test_restart_and_outage import metric

pytestmark = pytest.mark.timeout(120)


def test_three_replicas_let_one_probe_through(tmp_path, redis_server) -> None:
    tuning = tmp_path / "tuning.yaml"
    tuning.write_text("health:\n  base_ejection_s: 0.5\n  probe_permits: 1\n")
    routers = [
        RouterProcess(tmp_path, f"r{i}", redis_server.url, "--tuning", str(tuning))
        for i in range(3)
    ]
    try:
        for r in routers:
            r.start()
        for r in routers:
            r.wait_started()
        send(routers[0], [outcome("baseten", ok=False)] * 5)
        probing = router_pb2.HEALTH_STATE_PROBING
        # Same ejection everywhere (fleet order, same jitter), then half-open everywhere.
        wait_until(lambda: all(health_states(r)["baseten"] == probing for r in routers))
        wait_until(lambda: sum(metric(r, "router_redis_probe_permits_held") for r in routers) == 1)
        # Many rankings on every replica: the probing endpoint is offered exactly once.
        offered = sum("baseten" in rank_order(r) for _ in range(5) for r in routers)
        assert offered == 1
    finally:
        for r in routers:
            r.kill()
