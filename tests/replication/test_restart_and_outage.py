"""Restarts and Redis outages with real processes: state survives, requests never fail."""

from __future__ import annotations

import threading

import pytest

from router_common.pb import router_pb2
from tests.replication.fleet import (
    RouterProcess,
    endpoint_figures,
    health_states,
    metrics_text,
    outcome,
    rank_order,
    send,
)
from tests.replication.test_convergence import wait_until

pytestmark = pytest.mark.timeout(180)

PROVIDERS = ("cerebras", "together", "fireworks", "deepinfra")


def metric(router: RouterProcess, name: str) -> float:
    for line in metrics_text(router).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def attempts(router: RouterProcess) -> dict[str, int]:
    return {p: row["attempts"]["last_1h"] for p, row in endpoint_figures(router).items()}


def test_killed_replica_restarts_with_the_fleets_state(tmp_path, redis_server) -> None:
    # A long ejection, so that it cannot end while c restarts on a slow machine.
    tuning = tmp_path / "tuning.yaml"
    tuning.write_text("health:\n  base_ejection_s: 120\n  max_ejection_s: 300\n")
    extra = ("--redis-checkpoint-interval", "0.2", "--tuning", str(tuning))
    routers = [RouterProcess(tmp_path, f"r{i}", redis_server.url, *extra) for i in range(3)]
    a, b, c = routers
    try:
        for r in routers:
            r.start()
        for r in routers:
            r.wait_started()
        send(a, [outcome(p, ttft=100.0 * (i + 1)) for i, p in enumerate(PROVIDERS)] * 30)
        wait_until(lambda: attempts(c) == attempts(a))
        c.kill()
        # While c is down: more traffic, on both survivors, and an ejection.
        send(a, [outcome("cerebras", ttft=100.0)] * 50)
        send(b, [outcome("baseten", ok=False)] * 6)
        # Figures follow outcomes within about a second (the background merge), so
        # wait for both survivors to show everything before comparing c with them.
        wait_until(
            lambda: (
                attempts(a) == attempts(b)
                and attempts(a)["baseten"] == 6
                and attempts(a)["cerebras"] == 80
            )
        )
        # Let a checkpoint that holds the new data be written, so c loads it.
        written = sum(metric(r, "router_redis_checkpoints_written_total") for r in (a, b))
        wait_until(
            lambda: (
                sum(metric(r, "router_redis_checkpoints_written_total") for r in (a, b)) > written
            )
        )
        c.start()
        c.wait_started()
        assert c.serving()
        # The moment it reports SERVING it answers as its peers do: no catch-up window.
        assert attempts(c) == attempts(a)
        assert attempts(c)["cerebras"] == 80
        assert health_states(c) == health_states(a)
        assert health_states(c)["baseten"] == router_pb2.HEALTH_STATE_EJECTED
        assert rank_order(c) == rank_order(a)
        loaded = [r for r in c.records() if r.get("message") == "shared state loaded from redis"]
        assert loaded and loaded[-1]["checkpoint"] is True
    finally:
        for r in routers:
            r.kill()


def test_redis_killed_mid_traffic_routers_keep_serving_and_converge(tmp_path, redis_server) -> None:
    routers = [RouterProcess(tmp_path, f"r{i}", redis_server.url) for i in range(3)]
    a, b, _c = routers
    sent = {"n": 0}
    failures: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        # Outcomes to a and b and rankings on all three, throughout the outage.
        i = 0
        while not stop.is_set():
            try:
                target = (a, b)[i % 2]
                ack = send(target, [outcome("cerebras", ttft=120.0)] * 5)
                assert ack.accepted == 5
                sent["n"] += 5
                for r in routers:
                    assert rank_order(r)
            except BaseException as exc:
                failures.append(exc)
                return
            i += 1

    try:
        for r in routers:
            r.start()
        for r in routers:
            r.wait_started()
        worker = threading.Thread(target=traffic, daemon=True)
        worker.start()
        wait_until(lambda: sent["n"] >= 50)
        redis_server.kill()
        outage_start = sent["n"]
        wait_until(lambda: "router_redis_connected 0.0" in metrics_text(a))
        wait_until(lambda: sent["n"] >= outage_start + 100)
        text = metrics_text(a)
        assert "router_redis_buffered_outcomes 0.0" not in text
        assert all(r.serving() for r in routers)
        redis_server.start()
        wait_until(lambda: sent["n"] >= outage_start + 200)
        stop.set()
        worker.join(10)
        assert not failures, failures
        total = sent["n"]
        wait_until(lambda: all(attempts(r)["cerebras"] == total for r in routers), timeout=20)
        for r in routers:
            assert "router_redis_connected 1.0" in metrics_text(r)
        messages = [rec.get("message", "") for rec in a.records()]
        assert any(m.startswith("redis connection lost") for m in messages)
        assert "redis connection restored" in messages
    finally:
        stop.set()
        for r in routers:
            r.kill()


def test_one_redis_restart_is_one_outage_in_the_log(tmp_path, redis_server) -> None:
    # The client's pooled connections to the old server stayed in the pool; the
    # first call on one after "restored" failed ("Connection closed by server"):
    # a second "lost"/"restored" pair and errors for a single restart.
    router = RouterProcess(tmp_path, "r0", redis_server.url, "--redis-checkpoint-interval", "0.05")
    try:
        router.start()
        router.wait_started()
        # Checkpoints run beside the blocking XREAD, so the pool holds two connections.
        wait_until(lambda: metric(router, "router_redis_checkpoints_written_total") >= 3)
        redis_server.kill()
        wait_until(lambda: metric(router, "router_redis_connected") == 0.0)
        redis_server.start()
        wait_until(lambda: metric(router, "router_redis_connected") == 1.0)
        errors = metric(router, "router_redis_errors_total")
        written = metric(router, "router_redis_checkpoints_written_total")
        # Every loop has used the pool again: 20 more checkpoints, each beside XREAD.
        wait_until(lambda: metric(router, "router_redis_checkpoints_written_total") >= written + 20)
        messages = [rec.get("message", "") for rec in router.records()]
        lost = [m for m in messages if m.startswith("redis connection lost")]
        assert len(lost) == 1 and messages.count("redis connection restored") == 1, lost
        assert metric(router, "router_redis_errors_total") == errors
    finally:
        router.kill()
