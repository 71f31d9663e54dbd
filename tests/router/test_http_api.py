"""The router's HTTP side against a known set of outcomes sent over real gRPC.

Why this shape: the JSON API and /metrics are read by dashboards, alerting and
other tools, so these tests pin the documents' fields and the numbers in them
(percentiles against numpy's exact ones, uptime ratios, health states) for a
recorded set of outcomes, end to end through a real router on loopback.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from router_common.catalog import load_catalog, parse_catalog
from router_common.pb import router_pb2
from router_service.core import RouterCore
from router_service.figures import MIN_SAMPLES
from router_service.grpc_api import RpcCounter
from router_service.http_api import build_http_app
from router_service.metrics_json import (
    endpoints_document,
    models_document,
    models_document_in_slices,
)
from router_service.model import rounded_ratio
from tests.conftest import EXAMPLE_CATALOG, loopback_router, wait_for
from tests.router.pb_builders import failure, outcome

GLM = "zai/glm-4.7"
OSS = "openai/gpt-oss-120b"

CEREBRAS_TTFT = [100.0 + 10 * i for i in range(20)]
CEREBRAS_TPS = [300.0 + 20 * i for i in range(20)]


def recorded_outcomes() -> list[router_pb2.Outcome]:
    """The known set: enough data, too little, failures, a client error, another model."""
    batch = [
        outcome("cerebras", ttft_ms=t, tokens_per_second=s)
        for t, s in zip(CEREBRAS_TTFT, CEREBRAS_TPS, strict=True)
    ]
    for i in range(20):  # 20 successes and 2 failures, never in a row: stays healthy
        batch.append(outcome("together", ttft_ms=400.0, tokens_per_second=80.0))
        if i in (5, 15):
            batch.append(failure("together"))
    batch += [outcome("fireworks", ttft_ms=90.0, tokens_per_second=2000.0)] * (MIN_SAMPLES - 2)
    batch.append(
        router_pb2.Outcome(
            model=GLM,
            provider="deepinfra",
            started_at=time.time(),
            success=False,
            error_class=router_pb2.ERROR_CLASS_CLIENT_ERROR,
            http_status=400,
            duration_ms=5.0,
        )
    )
    batch += [failure("baseten") for _ in range(6)]
    batch += [outcome("groq", model=OSS, ttft_ms=150.0, tokens_per_second=900.0)] * 8
    return batch


@pytest.fixture
async def http(router_app) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=router_app.http_url) as session:
        yield session


@pytest.fixture
async def recorded(router_app, router_stub, http) -> dict[str, Any]:
    """Send the known outcomes (plus one junk one and one NOT_FOUND rank), wait until visible."""
    ack = await router_stub.RecordOutcome(
        router_pb2.RecordOutcomeRequest(outcomes=recorded_outcomes())
    )
    assert ack.rejected == 0
    junk = await router_stub.RecordOutcome(
        router_pb2.RecordOutcomeRequest(outcomes=[outcome("groq")])  # groq does not serve GLM
    )
    assert junk.rejected == 1
    skewed = await router_stub.RecordOutcome(  # a sender whose clock is 2 minutes ahead
        router_pb2.RecordOutcomeRequest(
            outcomes=[outcome("cerebras", started_at=time.time() + 120)]
        )
    )
    assert skewed.rejected == 1
    with pytest.raises(grpc.aio.AioRpcError):
        await router_stub.RankProviders(router_pb2.RankProvidersRequest(model="nobody/nothing"))

    async def refreshed() -> dict[str, Any] | None:
        async with http.get(f"/v1/models/{GLM}/endpoints") as response:
            doc = await response.json()
        rows = {e["provider_name"]: e for e in doc["data"]["endpoints"]}
        return rows if rows["cerebras"]["sample_size_last_1h"] == 20 else None

    return await wait_for(refreshed)


async def get_json(http: aiohttp.ClientSession, path: str, status: int = 200) -> Any:
    async with http.get(path) as response:
        assert response.status == status, await response.text()
        assert response.content_type == "application/json"
        return await response.json()


async def scrape(http: aiohttp.ClientSession) -> dict[tuple[str, frozenset], float]:
    """/metrics as {(sample name, labels): value}, via prometheus_client's own parser."""
    async with http.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def labels(**kv: str) -> frozenset:
    return frozenset(kv.items())


# -- the JSON API ---------------------------------------------------------------------


async def test_endpoints_document_matches_recorded_outcomes(recorded) -> None:
    rows = recorded
    assert list(rows) == ["cerebras", "together", "fireworks", "deepinfra", "baseten"]

    cerebras = rows["cerebras"]
    assert cerebras["name"] == "cerebras | zai/glm-4.7"
    assert cerebras["upstream_model"] == "zai-glm-4.7"
    assert cerebras["pricing"] == {"input_per_million": 2.25, "output_per_million": 2.75}
    assert cerebras["zero_data_retention"] is True
    assert cerebras["enough_data"] is True
    for field, values in (("latency_last_1h", CEREBRAS_TTFT), ("throughput_last_1h", CEREBRAS_TPS)):
        assert set(cerebras[field]) == {"p50", "p95"}
        assert cerebras[field]["p50"] == pytest.approx(np.quantile(values, 0.5), rel=0.02)
        assert cerebras[field]["p95"] == pytest.approx(np.quantile(values, 0.95), rel=0.02)
    assert cerebras["uptime_last_15m"] == cerebras["uptime_last_1h"] == 1.0
    assert cerebras["uptime_last_1d"] == 1.0
    assert cerebras["attempts"] == {"last_15m": 20, "last_1h": 20, "last_1d": 20}
    assert cerebras["status"] == "healthy"

    together = rows["together"]
    assert together["latency_last_1h"] == {"p50": 400.0, "p95": 400.0}
    assert together["throughput_last_1h"] == {"p50": 80.0, "p95": 80.0}
    assert together["sample_size_last_1h"] == 20  # failures have no TTFT
    assert together["uptime_last_1h"] == pytest.approx(20 / 22, abs=1e-4)
    assert together["attempts"]["last_1h"] == 22
    assert together["status"] == "healthy"

    fireworks = rows["fireworks"]  # below the minimum: nulls, not numbers
    assert fireworks["sample_size_last_1h"] == MIN_SAMPLES - 2
    assert fireworks["enough_data"] is False
    assert fireworks["latency_last_1h"] is None
    assert fireworks["throughput_last_1h"] is None
    assert fireworks["uptime_last_1h"] is None

    deepinfra = rows["deepinfra"]  # one client error: the caller's fault, not an attempt
    assert deepinfra["attempts"] == {"last_15m": 0, "last_1h": 0, "last_1d": 0}
    assert deepinfra["uptime_last_1h"] is None
    assert deepinfra["status"] == "healthy"

    baseten = rows["baseten"]
    assert baseten["status"] == "ejected"
    assert "consecutive" in baseten["status_reason"]
    assert baseten["ejected_until"] > time.time()
    assert baseten["attempts"]["last_1h"] == 6
    assert baseten["uptime_last_1h"] == 0.0
    assert baseten["latency_last_1h"] is None


async def test_endpoints_document_lists_health_events(recorded, http) -> None:
    doc = await get_json(http, f"/v1/models/{GLM}/endpoints")
    events = doc["data"]["health_events"]
    expected = {"provider_name": "baseten", "from": "healthy", "to": "ejected"}
    assert expected.items() <= events[-1].items()
    assert doc["data"]["min_samples"] == MIN_SAMPLES


async def test_models_list_has_best_p50_per_model(recorded, http) -> None:
    doc = await get_json(http, "/v1/models")
    assert doc["object"] == "list"
    by_id = {m["id"]: m for m in doc["data"]}
    assert list(by_id) == [GLM, OSS, "meta/llama-3.3-70b", "moonshotai/kimi-k2"]
    glm = by_id[GLM]
    assert glm["endpoint_count"] == 5
    assert glm["providers"] == ["cerebras", "together", "fireworks", "deepinfra", "baseten"]
    # fireworks is faster, but with too few samples it does not count.
    assert glm["best_p50_ttft_ms"] == recorded["cerebras"]["latency_last_1h"]["p50"]
    assert glm["best_p50_ttft_provider"] == "cerebras"
    assert glm["best_p50_throughput"] == recorded["cerebras"]["throughput_last_1h"]["p50"]
    assert glm["status_counts"] == {"healthy": 3, "no_data": 1, "ejected": 1}
    assert by_id[OSS]["best_p50_ttft_ms"] == 150.0
    assert by_id[OSS]["best_p50_throughput"] == 900.0
    assert by_id["meta/llama-3.3-70b"]["best_p50_ttft_ms"] is None
    assert by_id["meta/llama-3.3-70b"]["best_p50_throughput"] is None


async def test_timeseries_has_the_last_hour_per_minute(recorded, http) -> None:
    doc = await get_json(http, f"/v1/models/{GLM}/timeseries?range=1h")
    data = doc["data"]
    assert data["window"] == "1h" and data["bucket_seconds"] == 60
    assert data["ranges"] == ["5m", "15m", "1h"]
    series = {s["provider_name"]: s["points"] for s in data["series"]}
    assert list(series) == ["cerebras", "together", "fireworks", "deepinfra", "baseten"]
    points = series["cerebras"]
    assert len(points) == 60
    assert [p["start"] for p in points] == sorted(p["start"] for p in points)
    assert points[-1]["start"] <= time.time() < points[-1]["end"]
    recent = points[-2:]  # recorded just now (a minute may have turned since)
    assert sum(p["attempts"] for p in recent) == 20
    busiest = max(recent, key=lambda p: p["attempts"])
    if busiest["attempts"] == 20:
        # Nearest-rank percentiles from 2%-wide bins: within 2% of the sample at that rank.
        ranked = sorted(CEREBRAS_TTFT)
        assert busiest["ttft_p50"] == pytest.approx(ranked[9], rel=0.02)
        assert busiest["ttft_p95"] == pytest.approx(ranked[18], rel=0.02)
        assert busiest["throughput_p95"] is not None
        assert busiest["health"] == "healthy"
    assert all(p["ttft_p50"] is None and p["health"] == "no_data" for p in points[:-2])
    assert all(p["throughput_p50"] is None for p in series["deepinfra"])
    # deepinfra only had a client error: no evidence, so "no data", never "healthy".
    assert {p["health"] for p in series["deepinfra"]} == {"no_data"}
    # Too few samples in a bucket: counted, not plotted.
    assert sum(p["attempts"] for p in series["fireworks"]) == MIN_SAMPLES - 2
    assert all(p["ttft_p50"] is None for p in series["fireworks"])
    # baseten was ejected just now: the strip shows it.
    assert series["baseten"][-1]["health"] == "ejected"
    assert series["baseten"][-1]["failures"] + series["baseten"][-2]["failures"] == 6


async def test_timeseries_ranges_and_a_bad_range(recorded, http) -> None:
    for name, width, count in (("5m", 10, 30), ("15m", 10, 90)):
        data = (await get_json(http, f"/v1/models/{GLM}/timeseries?range={name}"))["data"]
        assert (data["window"], data["bucket_seconds"]) == (name, width)
        points = data["series"][0]["points"]
        assert len(points) == count
        assert sum(p["attempts"] for p in points[-2:]) == 20
    default = (await get_json(http, f"/v1/models/{GLM}/timeseries"))["data"]
    assert default["window"] == "15m"
    doc = await get_json(http, f"/v1/models/{GLM}/timeseries?range=2h", status=400)
    assert doc["error"]["message"] == 'range: expected one of 5m, 15m, 1h, got "2h"'
    # Found by the observability audit: ?range=1h&range=5m answered the hour, silently.
    doc = await get_json(http, f"/v1/models/{GLM}/timeseries?range=1h&range=5m", status=400)
    assert doc["error"]["message"] == 'range: give it once, got 2: ["1h", "5m"]'


async def test_unknown_model_is_404_json(router_app, http) -> None:
    for path in ("/v1/models/x/y/endpoints", "/v1/models/x/y/timeseries"):
        doc = await get_json(http, path, status=404)
        assert doc == {
            "error": {"message": 'model "x/y" is not in the catalog', "type": "not_found"}
        }
    doc = await get_json(http, "/v1/models/zai", status=404)
    assert doc["error"]["type"] == "not_found"
    async with http.get("/models/x/y") as response:
        assert response.status == 404
        assert response.content_type == "text/html"
        assert 'href="/"' in await response.text()  # a way back


async def raw_http(port: int, payload: bytes) -> bytes:
    """Send bytes no HTTP client would, and read the router's answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_unparseable_http_is_400_and_one_log_line_per_cause(router_app, caplog) -> None:
    # aiohttp logged each at ERROR with a traceback quoting the raw bytes (here a
    # token in a header): junk on the port flooded the log, and could leak.
    caplog.set_level(logging.WARNING)
    junk = [
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # LineTooLong
        b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\x01\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
    ]
    for payload in junk * 3:
        answer = await raw_http(router_app.http_port, payload)
        assert answer.startswith(b"HTTP/1.0 400 ") or answer.startswith(b"HTTP/1.1 400 "), answer
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records, "nothing logged at all"
    assert not any(r.exc_info or r.exc_text for r in records)
    assert all(r.getMessage() == "malformed HTTP request" for r in records)
    causes = [r.__dict__["cause"] for r in records]
    assert len(causes) == len(set(causes)) <= len(junk)  # once per cause per interval
    assert "s3cret" not in caplog.text


async def test_fresh_router_reports_not_enough_data(router_app, http) -> None:
    """An empty store (fresh start) yields nulls everywhere, never zeros or NaN."""
    doc = await get_json(http, "/v1/models")
    assert len(doc["data"]) == 4
    for model in doc["data"]:
        assert model["best_p50_ttft_ms"] is None
        assert model["best_p50_throughput"] is None
        endpoints = await get_json(http, f"/v1/models/{model['id']}/endpoints")
        for row in endpoints["data"]["endpoints"]:
            assert row["enough_data"] is False
            assert row["sample_size_last_1h"] == 0
            assert row["latency_last_1h"] is row["throughput_last_1h"] is None
            assert row["uptime_last_15m"] is row["uptime_last_1h"] is row["uptime_last_1d"] is None
            assert row["status"] == "healthy"
    series = await get_json(http, f"/v1/models/{GLM}/timeseries")
    assert all(p["ttft_p50"] is None for s in series["data"]["series"] for p in s["points"])
    metrics = await scrape(http)
    assert not [k for k in metrics if k[0] == "router_endpoint_ttft_seconds"]
    assert (
        metrics[
            (
                "router_endpoint_samples",
                labels(model=GLM, provider="cerebras", window="1h", metric="ttft"),
            )
        ]
        == 0
    )
    assert metrics[("router_outcomes_total", labels(error_class="none"))] == 0
    for page in ("/", f"/models/{GLM}", "/static/common.js", "/static/style.css"):
        async with http.get(page) as response:
            assert response.status == 200, page


async def test_an_uptime_with_a_failure_is_never_published_as_1(
    router_app, router_stub, http
) -> None:
    """Found by the observability audit: ratios were rounded to 4 digits, so one failure
    in 20,000 attempts (0.99995) read 1.0 in /endpoints and /timeseries (and "100%" on the
    dashboard) while /metrics said 0.99995. Ratios now keep 6 digits and a window with
    a failure never rounds up to 1."""
    for first in range(0, 20_000, 1000):
        batch = [outcome("cerebras") for _ in range(1000)]
        if first == 0:
            batch[0] = failure("cerebras")
        ack = await router_stub.RecordOutcome(router_pb2.RecordOutcomeRequest(outcomes=batch))
        assert ack.accepted == 1000
    router_app.refresh_now()
    doc = await get_json(http, f"/v1/models/{GLM}/endpoints")
    row = next(e for e in doc["data"]["endpoints"] if e["provider_name"] == "cerebras")
    assert row["attempts"]["last_1h"] == 20_000
    assert row["uptime_last_15m"] == row["uptime_last_1h"] == row["uptime_last_1d"] == 0.99995
    series = await get_json(http, f"/v1/models/{GLM}/timeseries?range=1h")
    points = [p for s in series["data"]["series"] for p in s["points"] if p["attempts"]]
    assert sum(p["failures"] for p in points) == 1
    assert all(p["uptime"] < 1 for p in points if p["failures"])
    metrics = await scrape(http)
    key = ("router_endpoint_uptime_ratio", labels(model=GLM, provider="cerebras", window="1h"))
    assert metrics[key] == row["uptime_last_1h"]


def test_published_ratios_reach_1_or_0_only_when_exact() -> None:
    assert rounded_ratio(20, 20) == 1.0
    assert rounded_ratio(0, 20) == 0.0
    assert rounded_ratio(999_999_999, 1_000_000_000) == 0.999999
    assert rounded_ratio(1, 1_000_000_000) == 0.000001
    assert rounded_ratio(2, 3) == 0.666667


# -- Prometheus -----------------------------------------------------------------------


async def test_metrics_match_recorded_outcomes(router_app, recorded, http) -> None:
    metrics = await scrape(http)
    cerebras = {"model": GLM, "provider": "cerebras"}

    def value(name: str, **kv: str) -> float:
        return metrics[(name, labels(**kv))]

    p50 = recorded["cerebras"]["latency_last_1h"]["p50"]
    assert value("router_endpoint_ttft_seconds", **cerebras, window="1h", quantile="0.5") == (
        pytest.approx(p50 / 1000, rel=1e-3)
    )
    assert value("router_endpoint_ttft_seconds", **cerebras, window="5m", quantile="0.95") == (
        pytest.approx(np.quantile(CEREBRAS_TTFT, 0.95) / 1000, rel=0.02)
    )
    assert value(
        "router_endpoint_throughput_tokens_per_second", **cerebras, window="1h", quantile="0.5"
    ) == pytest.approx(np.quantile(CEREBRAS_TPS, 0.5), rel=0.02)
    assert value("router_endpoint_samples", **cerebras, window="1h", metric="ttft") == 20
    # Too few samples: the count is there, the quantiles are not.
    fireworks = {"model": GLM, "provider": "fireworks"}
    fireworks_samples = value("router_endpoint_samples", **fireworks, window="1h", metric="ttft")
    assert fireworks_samples == MIN_SAMPLES - 2
    assert (
        "router_endpoint_ttft_seconds",
        labels(**fireworks, window="1h", quantile="0.5"),
    ) not in metrics

    together = {"model": GLM, "provider": "together"}
    assert value("router_endpoint_uptime_ratio", **together, window="1h") == pytest.approx(20 / 22)
    assert value("router_endpoint_attempts", **together, window="15m") == 22

    baseten = {"model": GLM, "provider": "baseten"}
    states = {
        s: value("router_endpoint_health_state", **baseten, state=s)
        for s in ("healthy", "degraded", "ejected", "probing")
    }
    assert states == {"healthy": 0, "degraded": 0, "ejected": 1, "probing": 0}
    assert value("router_endpoint_health_state", **cerebras, state="healthy") == 1
    assert value("router_endpoint_consecutive_failures", **baseten) == 6

    assert value("router_outcomes_total", error_class="none") == 20 + 20 + 3 + 8
    assert value("router_outcomes_total", error_class="server_error") == 2 + 6
    assert value("router_outcomes_total", error_class="client_error") == 1
    assert value("router_outcomes_total", error_class="timeout") == 0
    # By the field the rejection names: an operator tells a sender's skewed clock
    # (started_at) from a catalog the sender disagrees with (provider).
    assert value("router_outcomes_rejected_total", field="provider") == 1
    assert value("router_outcomes_rejected_total", field="started_at") == 1
    assert value("router_outcomes_rejected_total", field="ttft_ms") == 0
    assert value("router_rpc_requests_total", method="RecordOutcome", code="OK") == 3
    assert value("router_rpc_requests_total", method="RankProviders", code="NOT_FOUND") == 1
    version = router_app.core.catalog_version
    assert value("router_catalog_info", version=version) == 1
    assert value("router_catalog_models") == 4
    assert value("router_catalog_endpoints") == 19


async def test_metrics_label_values_come_from_the_catalog_only(router_app, recorded, http) -> None:
    """Junk model names sent by callers never become label values (bounded cardinality)."""
    metrics = await scrape(http)
    catalog = router_app.core.catalog
    for name, label_set in metrics:
        found = dict(label_set)
        if "model" in found:
            assert found["model"] in catalog.models, name
            providers = {e.provider.name for e in catalog.models[found["model"]].endpoints}
            assert found["provider"] in providers, name
    assert not any("nobody" in v for _, ls in metrics for _, v in ls)


async def test_metrics_negotiates_openmetrics(router_app, http) -> None:
    async with http.get("/metrics", headers={"Accept": "application/openmetrics-text"}) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        text = await response.text()
    assert text.rstrip().endswith("# EOF")
    assert "router_outcomes_total" in text


# -- without sockets ------------------------------------------------------------------


def endpoint_rows(core: RouterCore) -> dict[str, dict[str, Any]]:
    doc = endpoints_document(core, core.model(GLM))
    return {e["provider_name"]: e for e in doc["data"]["endpoints"]}


async def test_head_metrics_has_the_get_head_and_no_body(router_app, http) -> None:
    """/metrics is written in chunks; a HEAD answer must still carry no body, or the next
    answer on the kept-alive connection is read from the middle of it."""
    for _ in range(2):  # the second HEAD reuses the connection
        async with http.head("/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert int(response.headers["Content-Length"]) > 1000  # what a GET would send
            assert await response.read() == b""
    assert (await get_json(http, "/healthz"))["status"] == "ok"


def large_catalog(models: int, providers: int) -> str:
    """A catalog of ``models`` x ``providers`` endpoints (the limits allow 10,000 models)."""
    lines = ["providers:"]
    for p in range(providers):
        lines += [f"  p{p}:", f"    base_url: https://p{p}.example/v1", f"    api_key_env: KEY_{p}"]
    lines.append("models:")
    for m in range(models):
        lines += [f"  creator/model-{m}:", "    endpoints:"]
        lines += [
            f"      - {{provider: p{p}, input_price_per_million: 1, output_price_per_million: 2}}"
            for p in range(providers)
        ]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("path", ["/metrics", "/v1/models"])
async def test_a_scrape_of_a_large_catalog_leaves_the_event_loop_to_others(
    tmp_path, path: str
) -> None:
    """Found by the observability audit: /metrics was rendered in one synchronous call, and
    prometheus_client spends ~11 µs a sample, so with 10,000 endpoints (~120,000 series)
    each scrape held the router's event loop for about 1.3 s: every RankProviders call
    waited behind Prometheus. The per-endpoint series are now written in slices.

    Measured in the loop thread's CPU time (an OS preemption is not the router's doing):
    the longest stretch another task waited must be a small part of the scrape (it was
    nearly all of it: 1.79 s of 1.81 s here; now ~15 ms of ~150 ms). The model list
    (``/v1/models``, the dashboard's front page) held it ~50 ms at 10,000 endpoints in the
    same way: it too is built in slices."""
    app = loopback_router(tmp_path, seed=1)
    Path(app.settings.config_path).write_text(large_catalog(2000, 5))
    await app.start()
    # As the command line does after start (router_service/gc_pauses.py): a full GC pass
    # over this test process's heap is a stall of its own, not the scrape's.
    gc.collect()
    gc.freeze()
    try:
        waits: list[float] = []
        done = asyncio.Event()

        async def another_task() -> None:
            last = time.thread_time()
            while not done.is_set():
                await asyncio.sleep(0)
                now = time.thread_time()
                waits.append(now - last)
                last = now

        async with aiohttp.ClientSession() as session:
            task = asyncio.create_task(another_task())
            began = time.thread_time()
            async with session.get(app.http_url + path) as response:
                # Up to the answer's head: the router's part (reading a 10 MB body is the
                # test client's, on this same loop).
                scrape = time.thread_time() - began
                done.set()
                await task
                text = await response.text()
        if path == "/v1/models":
            assert json.loads(text)["data"][-1]["id"] == "creator/model-1999"  # the last one
        else:
            samples = {
                s.name
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.labels.get("model") == "creator/model-1999"
                and s.labels.get("provider") == "p4"
            }
            assert "router_endpoint_health_state" in samples  # the last endpoint is there
        assert max(waits) < scrape / 4, (max(waits), scrape)
    finally:
        gc.unfreeze()
        await app.stop()


def test_the_model_list_built_in_slices_comes_from_one_catalog() -> None:
    """The list yields to the loop between slices; a catalog reloaded meanwhile must not
    leave rows of the old one under the new version: the list starts over."""
    old, new = large_catalog(200, 5), large_catalog(3, 2)
    core = RouterCore(parse_catalog(old), "v1", time.time)
    built = models_document_in_slices(core)
    slices = 0
    with pytest.raises(StopIteration) as done:
        while True:
            built.send(None)  # one yield: the loop would run other tasks here
            slices += 1
            if slices == 1:
                core.replace_catalog(parse_catalog(new), "v2")
    document = done.value.value
    assert slices >= 2  # 1,000 endpoints: at least one yield before the reload
    assert document["catalog_version"] == "v2"
    assert [m["id"] for m in document["data"]] == [f"creator/model-{m}" for m in range(3)]
    assert [m["endpoint_count"] for m in document["data"]] == [2, 2, 2]


def test_minimum_samples_boundary_and_private_registries() -> None:
    """Exactly MIN_SAMPLES makes a number; one fewer is null. Apps never share a registry."""
    now = [time.time()]
    core = RouterCore(load_catalog(EXAMPLE_CATALOG), "v1", lambda: now[0])
    core.record([outcome("cerebras", started_at=now[0], ttft_ms=250.0)] * (MIN_SAMPLES - 1))
    core.refresh()
    rows = endpoint_rows(core)
    assert rows["cerebras"]["latency_last_1h"] is None
    assert rows["cerebras"]["enough_data"] is False
    assert models_document(core)["data"][0]["best_p50_ttft_ms"] is None
    core.record([outcome("cerebras", started_at=now[0], ttft_ms=250.0)])
    core.refresh()
    rows = endpoint_rows(core)
    assert rows["cerebras"]["latency_last_1h"] == {"p50": 250.0, "p95": 250.0}
    assert rows["cerebras"]["uptime_last_15m"] == 1.0
    assert models_document(core)["data"][0]["best_p50_ttft_ms"] == 250.0

    build_http_app(core, RpcCounter())
    build_http_app(core, RpcCounter())  # a second app on the same core: no duplicate-metric error
    assert not [m.name for m in REGISTRY.collect() if m.name.startswith("router_")]
