"""The router over a real gRPC channel on loopback: contract, errors, state, lifecycle."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from router_common.pb import router_pb2
from tests.conftest import wait_for
from tests.router.pb_builders import MODEL, failure, outcome, rank_request


async def test_rank_returns_every_endpoint_with_metadata(router_stub) -> None:
    response = await router_stub.RankProviders(rank_request(sort=router_pb2.SORT_BY_COST))
    names = [e.provider.name for e in response.endpoints]
    assert sorted(names) == ["baseten", "cerebras", "deepinfra", "fireworks", "together"]
    assert names[0] == "deepinfra"  # cheapest in the example catalog
    assert list(response.metadata.execution_order) == names
    assert response.metadata.strategy == "sort"
    assert response.metadata.sort == router_pb2.SORT_BY_COST
    assert response.metadata.catalog_version
    first = response.endpoints[0]
    assert first.provider.base_url.startswith("https://")
    assert first.provider.api_key_env == "DEEPINFRA_API_KEY"
    assert first.upstream_model == "zai-org/GLM-4.7"


async def test_zero_data_retention_excludes_with_reason(router_stub) -> None:
    response = await router_stub.RankProviders(rank_request(zero_data_retention=True))
    assert {e.provider.name for e in response.endpoints} == {"cerebras", "fireworks"}
    assert all(e.provider.zero_data_retention for e in response.endpoints)
    excluded = {x.provider: x.reason.code for x in response.metadata.excluded}
    assert excluded == {"together": "not_zdr", "deepinfra": "not_zdr", "baseten": "not_zdr"}


async def test_order_puts_named_providers_first(router_stub) -> None:
    response = await router_stub.RankProviders(
        rank_request(order=["baseten", "cerebras"], sort=router_pb2.SORT_BY_COST)
    )
    assert [e.provider.name for e in response.endpoints][:2] == ["baseten", "cerebras"]


async def test_unknown_model_is_not_found_naming_it(router_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await router_stub.RankProviders(rank_request(model="nobody/nothing"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nobody/nothing" in info.value.details()


@pytest.mark.parametrize(
    ("request_msg", "field"),
    [
        (rank_request(percentile=42), "percentile"),
        (rank_request(sort=9), "sort"),
        (
            router_pb2.RankProvidersRequest(model=MODEL, estimated_input_tokens=-5),
            "estimated_input_tokens",
        ),
        (router_pb2.RankProvidersRequest(model=MODEL, max_output_tokens=-1), "max_output_tokens"),
        (rank_request(only=["groq"], ignore=["groq"]), "only"),
        (rank_request(max_price=router_pb2.MaxPrice(input_per_million=float("nan"))), "price"),
        (rank_request(preferred_max_ttft_ms=-3.0), "preferred_max_ttft_ms"),
    ],
)
async def test_bad_preferences_are_invalid_argument_naming_the_field(
    router_stub, request_msg, field
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await router_stub.RankProviders(request_msg)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()


async def test_filters_leaving_nothing_fail_precondition(router_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await router_stub.RankProviders(rank_request(only=["together"], zero_data_retention=True))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert '"together | zai/glm-4.7": not_zdr' in info.value.details()


async def test_record_outcome_rejects_junk_item_by_item(router_app, router_stub) -> None:
    keys_before = router_app.core.store.keys()
    ack = await router_stub.RecordOutcome(
        router_pb2.RecordOutcomeRequest(
            outcomes=[
                outcome("cerebras"),
                outcome("cerebras", ttft_ms=float("nan")),
                outcome("cerebras", tokens_per_second=float("inf")),
                outcome("cerebras", duration_ms=-1.0),
                outcome("groq"),  # groq does not serve glm-4.7
                outcome("cerebras", model="made/up"),
                outcome("cerebras", started_at=time.time() - 10 * 86_400),
                router_pb2.Outcome(model=MODEL, provider="cerebras", success=False),
                outcome("cerebras", success=False),  # NONE contradicts a failure
                outcome("cerebras", ttft_ms=10_000_000.0),
            ]
        )
    )
    assert (ack.accepted, ack.rejected) == (1, 9)
    reasons = {r.index: r.reason for r in ack.rejections}
    assert reasons[1] == 'ttft_ms: must be a finite number, got "NaN"'
    assert reasons[2] == 'tokens_per_second: must be a finite number, got "Infinity"'
    assert reasons[3].startswith("duration_ms")
    assert 'endpoint "groq | zai/glm-4.7" (provider | model) is not in the catalog' in reasons[4]
    assert "made/up" in reasons[5]
    assert reasons[6].startswith("started_at")
    assert reasons[7].startswith("error_class: required")
    assert reasons[8].startswith('error_class: "ERROR_CLASS_NONE" contradicts')
    assert reasons[9].startswith("ttft_ms: must be within")
    from router_service.model import EndpointKey

    assert router_app.core.store.keys() - keys_before <= {EndpointKey(MODEL, "cerebras")}


async def test_too_many_outcomes_in_one_call_is_invalid_argument(router_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await router_stub.RecordOutcome(
            router_pb2.RecordOutcomeRequest(outcomes=[outcome("cerebras")] * 1001)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outcomes" in info.value.details() and "per call" in info.value.details()


async def test_too_many_outcomes_in_one_stream_message_is_invalid_argument(router_stub) -> None:
    async def requests():
        yield router_pb2.RecordOutcomeRequest(outcomes=[outcome("cerebras")])
        yield router_pb2.RecordOutcomeRequest(outcomes=[outcome("cerebras")] * 1001)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await router_stub.StreamOutcomes(requests())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1000 per message, got 1001" in info.value.details()


async def test_junk_model_names_do_not_grow_memory(router_app, router_stub) -> None:
    """50k distinct bogus names through both RPCs leave no trace in the router's state."""
    core = router_app.core
    keys_before = core.store.keys()
    health_before = list(core.health.known())

    async def requests():
        for batch in range(50):
            yield router_pb2.RecordOutcomeRequest(
                outcomes=[
                    outcome("cerebras", model=f"bogus/m-{batch}-{i}-{'x' * 40}")
                    for i in range(1000)
                ]
            )

    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        ack = await router_stub.StreamOutcomes(requests())
        for i in range(2000):
            with pytest.raises(grpc.aio.AioRpcError):
                await router_stub.RankProviders(rank_request(model=f"bogus/rank-{i}-{'y' * 40}"))
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (ack.accepted, ack.rejected) == (0, 50_000)
    assert len(ack.rejections) == 100  # details are capped; the count is exact
    assert core.store.keys() == keys_before
    assert list(core.health.known()) == health_before
    assert core.outcomes_rejected == 50_000
    # Retaining the names would take > 4 MB; allow noise from interpreter caches.
    assert after - before < 1_000_000, f"grew by {after - before} bytes"


async def test_stream_outcomes_change_the_ttft_ranking(router_app, router_stub) -> None:
    async def batches():
        for _ in range(5):
            yield router_pb2.RecordOutcomeRequest(
                outcomes=[outcome("fireworks", ttft_ms=120.0) for _ in range(10)]
                + [outcome("cerebras", ttft_ms=900.0) for _ in range(10)]
            )

    ack = await router_stub.StreamOutcomes(batches())
    assert (ack.accepted, ack.rejected) == (100, 0)

    async def fireworks_first():
        response = await router_stub.RankProviders(
            rank_request(sort=router_pb2.SORT_BY_TTFT, zero_data_retention=True)
        )
        first = response.endpoints[0]
        return first if first.provider.name == "fireworks" and first.ttft_samples >= 50 else None

    first = await wait_for(fireworks_first)
    assert first.ttft_ms == pytest.approx(120.0)
    assert first.window == "recent"  # the decayed recent estimate, fresh


async def test_failures_eject_and_show_in_get_health(router_app, router_stub) -> None:
    await router_stub.RecordOutcome(
        router_pb2.RecordOutcomeRequest(outcomes=[failure("baseten") for _ in range(6)])
    )
    health = await router_stub.GetHealth(router_pb2.GetHealthRequest(model=MODEL))
    states = {h.provider: h for h in health.endpoints}
    assert states["baseten"].state == router_pb2.HEALTH_STATE_EJECTED
    assert states["baseten"].HasField("ejected_until")
    assert "consecutive" in states["baseten"].reason
    assert states["cerebras"].state == router_pb2.HEALTH_STATE_HEALTHY
    response = await router_stub.RankProviders(rank_request())
    assert "baseten" not in [e.provider.name for e in response.endpoints]
    assert {x.provider: x.reason.code for x in response.metadata.excluded} == {"baseten": "ejected"}


async def test_model_endpoints_and_list_models(router_app, router_stub) -> None:
    await router_stub.RecordOutcome(
        router_pb2.RecordOutcomeRequest(
            outcomes=[
                outcome("together", ttft_ms=200.0 + i, tokens_per_second=80.0) for i in range(20)
            ]
        )
    )

    async def together_has_data():
        response = await router_stub.GetModelEndpoints(
            router_pb2.GetModelEndpointsRequest(model=MODEL)
        )
        row = next(e for e in response.endpoints if e.provider.name == "together")
        return row if row.latency_last_1h.samples == 20 else None

    row = await wait_for(together_has_data)
    assert 200.0 <= row.latency_last_1h.p50 <= 220.0
    assert row.throughput_last_1h.p50 == pytest.approx(80.0)
    assert row.uptime_last_1h.ratio == pytest.approx(1.0)
    assert row.uptime_last_1h.attempts == 20
    listing = await router_stub.ListModels(router_pb2.ListModelsRequest())
    by_id = {m.id: m for m in listing.models}
    assert by_id[MODEL].best_p50_ttft_ms == pytest.approx(row.latency_last_1h.p50)
    assert not by_id["meta/llama-3.3-70b"].HasField("best_p50_ttft_ms")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await router_stub.GetModelEndpoints(router_pb2.GetModelEndpointsRequest(model="x/y"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_service_and_reflection(router_app) -> None:
    async with grpc.aio.insecure_channel(router_app.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "router.v1.Router"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for reply in reflect.ServerReflectionInfo(ask()):
            names = {s.name for s in reply.list_services_response.service}
            assert {"router.v1.Router", "grpc.health.v1.Health"} <= names
            break


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_every_listed_service_and_method_resolves_by_reflection(
    router_app, version: str
) -> None:
    # grpcurl-style: list, then describe each service and method. The v1 reflection
    # service was listed but not resolvable, and no method symbol resolved at all.
    from google.protobuf import descriptor_pb2

    async with grpc.aio.insecure_channel(router_app.grpc_address) as channel:
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )

        async def ask(**request: str) -> reflection_pb2.ServerReflectionResponse:
            replies = [r async for r in call([reflection_pb2.ServerReflectionRequest(**request)])]
            return replies[0]

        listed = await ask(list_services="")
        names = [s.name for s in listed.list_services_response.service]
        assert "grpc.reflection.v1.ServerReflection" in names
        for name in names:
            reply = await ask(file_containing_symbol=name)
            assert reply.HasField("file_descriptor_response"), name
            files = [
                descriptor_pb2.FileDescriptorProto.FromString(raw)
                for raw in reply.file_descriptor_response.file_descriptor_proto
            ]
            services = {f"{f.package}.{s.name}": s for f in files for s in f.service}
            assert name in services, name
            for method in services[name].method:
                by_method = await ask(file_containing_symbol=f"{name}.{method.name}")
                assert by_method.HasField("file_descriptor_response"), f"{name}.{method.name}"
        missing = await ask(file_containing_symbol="router.v1.Router.NoSuchMethod")
        assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_corrupt_health_and_reflection_requests_are_invalid_argument(
    router_app, caplog
) -> None:
    # Open to every caller, these answered UNKNOWN ("Unexpected <class '...DecodeError'>")
    # with an ERROR traceback per call: a cheap log flood for anyone.
    import logging

    caplog.set_level(logging.WARNING)
    identity = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    async with grpc.aio.insecure_channel(router_app.grpc_address) as channel:
        calls = [
            channel.unary_unary("/grpc.health.v1.Health/Check", **identity)(b"\xff\xff"),
            channel.unary_stream("/grpc.health.v1.Health/Watch", **identity)(b"\x0a\x02\xc3\x28"),
        ]
        for version in ("v1", "v1alpha"):
            path = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
            calls.append(channel.stream_stream(path, **identity)(iter([b"\xff\xff"])))
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                if hasattr(call, "__aiter__"):
                    _ = [r async for r in call]
                else:
                    await call
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
            assert err.value.details() in (
                "the message is not valid protobuf wire format",
                "a string field is not valid UTF-8",
            )
        health = health_pb2_grpc.HealthStub(channel)  # and a good request still works
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert not any(r.exc_info or r.exc_text for r in caplog.records)
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


async def test_health_turns_not_serving_on_shutdown(router_app) -> None:
    async with grpc.aio.insecure_channel(router_app.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="router.v1.Router"))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(router_app.stop())
        second = await watch.read()
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping


async def test_catalog_reload_keeps_metrics_of_surviving_endpoints(router_app, router_stub) -> None:
    from router_service.model import EndpointKey

    await router_stub.RecordOutcome(
        router_pb2.RecordOutcomeRequest(outcomes=[outcome("cerebras"), outcome("baseten")])
    )
    core = router_app.core
    await wait_for(lambda: core.store.stats(EndpointKey(MODEL, "cerebras")).uptime_1h.attempts == 1)
    version = core.catalog_version
    path = Path(router_app.settings.config_path)
    original = path.read_text()
    path.write_text("providers: [broken\n")
    assert router_app.reload_catalog() is False
    assert core.catalog_version == version
    path.write_text(
        original.replace(
            "      - {provider: baseten, upstream_model: zai-org/GLM-4.7, "
            "input_price_per_million: 0.60, output_price_per_million: 2.20}\n",
            "",
        )
    )
    # The file watcher picks the change up without a restart or a signal.
    await wait_for(lambda: core.catalog_version != version)
    assert "baseten" not in [e.provider.name for e in core.catalog.models[MODEL].endpoints]
    assert core.store.stats(EndpointKey(MODEL, "cerebras")).uptime_1h.attempts == 1
    assert EndpointKey(MODEL, "baseten") not in core.store.keys()
    ack = await router_stub.RecordOutcome(
        router_pb2.RecordOutcomeRequest(outcomes=[outcome("baseten")])
    )
    assert ack.rejected == 1


async def test_weights_only_for_load_balance(router_stub) -> None:
    balanced = await router_stub.RankProviders(rank_request())
    assert balanced.metadata.strategy == "load_balance"
    assert all(e.HasField("weight") and e.weight > 0 for e in balanced.endpoints)
    ordered = await router_stub.RankProviders(rank_request(order=["baseten"]))
    assert not any(e.HasField("weight") for e in ordered.endpoints)


async def test_list_models_and_http_models_agree_on_best_p50(router_app, router_stub) -> None:
    # together: 4 fast samples (below the 5-sample rule); cerebras: 5 slower ones.
    await router_stub.RecordOutcome(
        router_pb2.RecordOutcomeRequest(
            outcomes=[outcome("together", ttft_ms=50.0, tokens_per_second=900.0)] * 4
            + [outcome("cerebras", ttft_ms=300.0, tokens_per_second=100.0)] * 5
        )
    )
    listing = await router_stub.ListModels(router_pb2.ListModelsRequest())
    grpc_best = next(m for m in listing.models if m.id == MODEL)
    async with (
        aiohttp.ClientSession(base_url=router_app.http_url) as session,
        session.get("/v1/models") as resp,
    ):
        http_best = next(m for m in (await resp.json())["data"] if m["id"] == MODEL)
    assert grpc_best.best_p50_ttft_ms == pytest.approx(300.0)
    assert http_best["best_p50_ttft_ms"] == pytest.approx(grpc_best.best_p50_ttft_ms)
    assert http_best["best_p50_ttft_provider"] == "cerebras"
    assert grpc_best.best_p50_tokens_per_second == pytest.approx(100.0)
    assert http_best["best_p50_throughput"] == pytest.approx(100.0)
