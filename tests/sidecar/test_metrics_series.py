"""The sidecar's ``/metrics``: the series the README names, and labels callers cannot grow.

Found by an audit: ``router_sidecar_hedges_total`` and
``router_sidecar_exploration_races_total`` had no series at all until the
first hedge or race, so an alert or panel on ``{result="won"}`` read "no
data" on a healthy sidecar. Every ``result`` now starts at 0. Real sidecar on
the fallback catalog, fake providers, plain HTTP.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from sidecar_helpers import MODEL, Stack

from sidecar.app import SidecarApp

_LABELS = re.compile(r'(\w+)="([^"]*)"')


async def _metrics(sc: SidecarApp) -> str:
    async with (
        aiohttp.ClientSession() as s,
        s.get(sc.base_url.removesuffix("/v1") + "/metrics") as r,
    ):
        assert r.status == 200
        return await r.text()


async def _chat(sc: SidecarApp, body: dict[str, Any]) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.post(sc.base_url + "/chat/completions", json=body) as r,
    ):
        await r.read()
        return r.status


async def test_hedge_and_race_results_are_series_from_the_start(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    sc = await stack.start_sidecar(router="127.0.0.1:1", fallback=True)
    text = await _metrics(sc)
    for result in ("won", "lost", "both_failed"):
        assert f'router_sidecar_hedges_total{{result="{result}"}} 0.0' in text, result
    for result in ("explored_won", "leader_won", "both_failed"):
        assert f'router_sidecar_exploration_races_total{{result="{result}"}} 0.0' in text, result
    for name in (
        "router_sidecar_hedge_cancelled_cost_usd_total 0.0",
        "router_sidecar_exploration_race_cost_usd_total 0.0",
        "router_sidecar_providers_without_key 0.0",
    ):
        assert name in text, name


async def test_label_values_come_from_the_catalog_whatever_callers_send(stack: Stack) -> None:
    """Unknown models, unknown providers and odd fields add no label value (the README's
    promise: catalog names and fixed enums only)."""
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.write_catalog()
    sc = await stack.start_sidecar(router="127.0.0.1:1", fallback=True)
    msgs = [{"role": "user", "content": "hi"}]
    assert await _chat(sc, {"model": MODEL, "messages": msgs, "max_tokens": 2}) == 200
    for i in range(20):
        await _chat(sc, {"model": f"ghost/model-{i}", "messages": msgs})
        await _chat(sc, {"model": MODEL, "messages": msgs, "models": [f"ghost/other-{i}"]})
        await _chat(sc, {"model": MODEL, "messages": msgs, "provider": {"order": [f"p{i}"]}})
        await _chat(
            sc,
            {
                "model": MODEL,
                "messages": msgs,
                "max_tokens": 2,
                "providerOptions": {"gateway": {"providerTimeouts": {f"p{i}": 1000}}},
            },
        )
    values: dict[str, set[str]] = {}
    for line in (await _metrics(sc)).splitlines():
        if line.startswith("router_sidecar_"):
            for label, value in _LABELS.findall(line.split(" ", 1)[0]):
                values.setdefault(label, set()).add(value)
    assert values["model"] == {MODEL}
    assert values["provider"] <= {"alpha", "beta"}
    assert values["status"] <= {"200", "400", "404"}
    assert set(values) <= {"model", "provider", "status", "error_class", "result", "source", "le"}


async def test_no_created_series_beside_the_counters_and_histograms(stack: Stack) -> None:
    """Found by the observability audit: prometheus_client wrote a ``*_created`` gauge
    beside every labelled counter and histogram child (``router_sidecar_attempts_created
    {provider,error_class}``, …), doubling the series Prometheus stores for a value no
    alert reads. The exposition stays valid, every documented series stays."""
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    sc = await stack.start_sidecar(router="127.0.0.1:1", fallback=True)
    msgs = [{"role": "user", "content": "hi"}]
    assert await _chat(sc, {"model": MODEL, "messages": msgs, "max_tokens": 2}) == 200
    text = await _metrics(sc)
    assert "_created" not in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["router_sidecar_attempts"].type == "counter"
    assert families["router_sidecar_upstream_ttft_seconds"].type == "histogram"
    assert 'router_sidecar_attempts_total{error_class="none",provider="alpha"} 1.0' in text
    assert 'router_sidecar_requests_total{status="200"} 1.0' in text
