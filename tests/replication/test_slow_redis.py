"""A Redis that stops answering (DEBUG SLEEP) never holds up a request."""

from __future__ import annotations

import threading

import pytest
import redis

from router_common.pb import router_pb2
from tests.replication.fleet import health_states, outcome, rank_order, send
from tests.replication.test_convergence import wait_until

pytestmark = pytest.mark.timeout(120)

SLEEP_S = 4


def test_requests_are_answered_while_redis_is_blocked(fleet, redis_server) -> None:
    a, b, _ = fleet
    send(a, [outcome("cerebras")] * 5)
    wait_until(lambda: rank_order(b))
    blocked = threading.Event()

    def block_redis() -> None:
        client = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=30)
        blocked.set()
        client.execute_command("DEBUG", "SLEEP", SLEEP_S)

    sleeper = threading.Thread(target=block_redis, daemon=True)
    sleeper.start()
    blocked.wait(5)
    # Rankings and outcome reports are answered while Redis answers nothing...
    for router in fleet:
        assert rank_order(router)
    ack = send(a, [outcome("baseten", ok=False)] * 5)
    assert ack.accepted == 5
    # ...and the accepting replica's health learns from them without the stream
    # (after the 1 s echo timeout), still inside the stall.
    wait_until(lambda: health_states(a)["baseten"] == router_pb2.HEALTH_STATE_EJECTED)
    assert sleeper.is_alive(), "Redis was answering again: the test proved nothing"
    sleeper.join(SLEEP_S + 5)
    # Once Redis answers again, the peers get the same verdict.
    wait_until(lambda: health_states(b)["baseten"] == router_pb2.HEALTH_STATE_EJECTED)
