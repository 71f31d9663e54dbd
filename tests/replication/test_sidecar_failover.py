"""A sidecar balancing over router replicas keeps serving when the replica it used dies."""

from __future__ import annotations

import asyncio

import pytest

from tests.replication.fleet import RouterProcess, endpoint_figures, metrics_text
from tests.sidecar.sidecar_helpers import MODEL, Stack, openai_client, wait_for

pytestmark = pytest.mark.timeout(120)


def rpcs(router: RouterProcess) -> float:
    lines = metrics_text(router).splitlines()
    return sum(float(x.split()[-1]) for x in lines if x.startswith("router_rpc_requests_total{"))


def total_attempts(router: RouterProcess) -> int:
    return sum(row["attempts"]["last_1h"] for row in endpoint_figures(router, MODEL).values())


async def test_sidecar_keeps_going_when_a_replica_dies(tmp_path, redis_server) -> None:
    stack = Stack(tmp_path)
    routers: list[RouterProcess] = []
    try:
        await stack.add_providers({"alpha": {}, "beta": {}})
        catalog = stack.write_catalog()
        routers = [
            RouterProcess(tmp_path, f"r{i}", redis_server.url, catalog=catalog) for i in range(2)
        ]
        for r in routers:
            r.start()
        for r in routers:
            await asyncio.to_thread(r.wait_started)
        a, b = routers
        # The form a headless Service gives through dns:///: several addresses, round_robin.
        sidecar = await stack.start_sidecar(router=f"ipv4:{a.grpc_address},{b.grpc_address}")
        client = openai_client(sidecar)

        async def chat(n: int) -> None:
            for _ in range(n):
                reply = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}]
                )
                assert reply.choices[0].message.content

        await chat(10)
        await wait_for(lambda: total_attempts(b) == 10 and total_attempts(a) == 10)
        # round_robin: both replicas served the sidecar's calls, not just the first address.
        assert all(rpcs(r) > 0 for r in routers)
        a.kill()
        await chat(20)  # every request succeeds with one replica gone
        await wait_for(lambda: total_attempts(b) == 30, timeout=15)
    finally:
        for r in routers:
            r.kill()
        await stack.close()
