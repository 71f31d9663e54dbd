"""Authentication against a real router over real gRPC/HTTP: tokens, scopes, reload, mTLS."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import aiohttp
import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from multidict import CIMultiDict

from router_common.pb import router_pb2, router_pb2_grpc
from router_service.auth import AuthConfigError, parse_tokens_file
from router_service.security import SecuritySettings
from tests.conftest import loopback_router, wait_for

MODEL = "zai/glm-4.7"
RANK = router_pb2.RankProvidersRequest(model=MODEL)


def write_tokens(tmp_path: Path, dash_token: str = "dash-token-1") -> Path:
    (tmp_path / "dash-token").write_text(dash_token + "\n")
    path = tmp_path / "tokens.yaml"
    path.write_text(
        "callers:\n"
        '  app-sidecars: {token: "sidecar-secret-1", scopes: [rank, report]}\n'
        "  dashboards: {token_file: dash-token, scopes: [read]}\n"
    )
    return path


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def code_of(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture
async def token_router(tmp_path: Path):
    tokens = write_tokens(tmp_path)
    app = loopback_router(
        tmp_path,
        drain_seconds=0.2,
        watch_catalog=False,
        security=SecuritySettings(auth_tokens=str(tokens), reload_interval_s=0.05),
    )
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def test_tokens_and_scopes_are_enforced_and_counted(token_router) -> None:
    async with grpc.aio.insecure_channel(token_router.grpc_address) as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        assert await code_of(stub.RankProviders(RANK)) == grpc.StatusCode.UNAUTHENTICATED
        wrong = bearer("not-a-token-at-all")
        assert await code_of(stub.RankProviders(RANK, metadata=wrong)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        sidecar = bearer("sidecar-secret-1")
        assert await code_of(stub.RankProviders(RANK, metadata=sidecar)) == grpc.StatusCode.OK
        listing = stub.ListModels(router_pb2.ListModelsRequest(), metadata=sidecar)
        assert await code_of(listing) == grpc.StatusCode.PERMISSION_DENIED
        dash = bearer("dash-token-1")
        assert await code_of(stub.RankProviders(RANK, metadata=dash)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        record = stub.RecordOutcome(router_pb2.RecordOutcomeRequest(), metadata=dash)
        assert await code_of(record) == grpc.StatusCode.PERMISSION_DENIED
        listing = stub.ListModels(router_pb2.ListModelsRequest(), metadata=dash)
        assert await code_of(listing) == grpc.StatusCode.OK
        # Probes and reflection need no token (v1alpha and v1).
        health = health_pb2_grpc.HealthStub(ch)
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        for service in ("v1alpha", "v1"):
            call = ch.stream_stream(
                f"/grpc.reflection.{service}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )([reflection_pb2.ServerReflectionRequest(list_services="")])
            names = [s.name async for r in call for s in r.list_services_response.service]
            assert "router.v1.Router" in names, service
    counts = token_router.servicer.rpc_counter.counts
    assert counts[("RankProviders", "UNAUTHENTICATED")] == 2
    assert counts[("RankProviders", "PERMISSION_DENIED")] == 1
    assert counts[("ListModels", "PERMISSION_DENIED")] == 1
    assert counts[("RecordOutcome", "PERMISSION_DENIED")] == 1


async def test_refusals_read_as_json_for_clients_in_any_language(token_router) -> None:
    # Every error text quotes as JSON does (README "Errors"), refusals too.
    from tests.router.test_contract_errors import assert_json_values

    async with grpc.aio.insecure_channel(token_router.grpc_address) as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        for metadata, expected in [
            ((), 'missing credentials: send "authorization: Bearer <token>"'),
            ((("authorization", "Basic eDp5"),), 'authorization must be "Bearer <token>"'),
            (bearer("not-a-token-at-all"), "the bearer token is not valid"),
            (bearer("dash-token-1"), 'caller "dashboards" lacks the "rank" scope'),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RankProviders(RANK, metadata=metadata)
            assert err.value.details().startswith(expected), err.value.details()
            assert_json_values(err.value.details())


async def test_tokens_file_reloads_and_a_bad_one_keeps_the_old_callers(
    token_router, tmp_path: Path
) -> None:
    async with grpc.aio.insecure_channel(token_router.grpc_address) as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        (tmp_path / "dash-token").write_text("dash-token-2\n")  # a Secret rotation

        async def rotated() -> bool:
            call = stub.ListModels(router_pb2.ListModelsRequest(), metadata=bearer("dash-token-2"))
            return await code_of(call) == grpc.StatusCode.OK

        await wait_for(rotated, timeout=5)
        old = stub.ListModels(router_pb2.ListModelsRequest(), metadata=bearer("dash-token-1"))
        assert await code_of(old) == grpc.StatusCode.UNAUTHENTICATED
        refused = token_router.security.tokens.refused
        (tmp_path / "tokens.yaml").write_text("callers: [oops]\n")
        await wait_for(lambda: token_router.security.tokens.refused > refused, timeout=5)
        still = stub.ListModels(router_pb2.ListModelsRequest(), metadata=bearer("dash-token-2"))
        assert await code_of(still) == grpc.StatusCode.OK


async def test_two_authorization_entries_are_refused_whatever_their_order(token_router) -> None:
    # The first entry used to decide: good-then-bad passed, bad-then-good did not, and a
    # read token followed by a rank token was judged on the read one. Authorization is a
    # singleton field (RFC 9110 5.3): more than one is refused on both ports.
    good, other = (
        ("authorization", "Bearer sidecar-secret-1"),
        ("authorization", "Bearer wrong-wrong"),
    )
    async with grpc.aio.insecure_channel(token_router.grpc_address) as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        for metadata in [(good, other), (other, good), (good, good)]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RankProviders(RANK, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert err.value.details() == "send one authorization entry, got 2"
    counts = token_router.servicer.rpc_counter.counts
    assert counts[("RankProviders", "UNAUTHENTICATED")] == 3
    dash = "Bearer dash-token-1"
    async with aiohttp.ClientSession() as http:
        for second in (dash, "Bearer wrong-wrong"):
            headers = CIMultiDict([("Authorization", dash), ("Authorization", second)])
            async with http.get(f"{token_router.http_url}/v1/models", headers=headers) as resp:
                assert resp.status == 401
                body = await resp.json()
                assert body["error"]["message"] == "send one authorization entry, got 2"


async def test_the_router_keeps_token_digests_not_tokens(token_router) -> None:
    # compare_digest returns early when lengths differ, so comparing raw tokens told a
    # timing attacker each token's length; digests are all 32 bytes. And a repr or a
    # core dump of the store holds no token.
    entries = token_router.security.tokens._entries
    assert entries and all(len(entry.digest) == 32 for entry in entries)
    held = repr(entries)
    assert "sidecar-secret-1" not in held and "dash-token-1" not in held
    async with grpc.aio.insecure_channel(token_router.grpc_address) as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        assert await code_of(stub.RankProviders(RANK, metadata=bearer("sidecar-secret-1"))) == (
            grpc.StatusCode.OK
        )
        assert await code_of(stub.RankProviders(RANK, metadata=bearer("sidecar-secret-"))) == (
            grpc.StatusCode.UNAUTHENTICATED  # a prefix of a token is not the token
        )


async def test_a_malformed_request_without_a_token_is_unauthenticated(token_router) -> None:
    # The request's parse was judged before its caller: anyone without a token got
    # INVALID_ARGUMENT (and a "malformed request" log line) for junk.
    async with grpc.aio.insecure_channel(token_router.grpc_address) as ch:
        raw = ch.unary_unary(
            "/router.v1.Router/RankProviders",
            request_serializer=lambda b: b,
            response_deserializer=router_pb2.RankProvidersResponse.FromString,
        )
        assert await code_of(raw(b"\x0a\xff")) == grpc.StatusCode.UNAUTHENTICATED
        assert await code_of(raw(b"\x0a\xff", metadata=bearer("dash-token-1"))) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert await code_of(raw(b"\x0a\xff", metadata=bearer("sidecar-secret-1"))) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )


async def test_without_authentication_an_authorization_sent_is_ignored(tmp_path: Path) -> None:
    # With no tokens and no client CA the router checks nothing, and the HTTP side
    # ignored Authorization; gRPC refused a Basic one (or two entries) with
    # UNAUTHENTICATED, so a client behind a proxy adding credentials could not call.
    app = loopback_router(tmp_path, drain_seconds=0.1, watch_catalog=False)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.grpc_address) as ch:
            stub = router_pb2_grpc.RouterStub(ch)
            for metadata in [
                (("authorization", "Basic eDp5"),),
                (("authorization", "Bearer a-token-1"), ("authorization", "Bearer b-token-2")),
            ]:
                assert await code_of(stub.RankProviders(RANK, metadata=metadata)) == (
                    grpc.StatusCode.OK
                )
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": "Basic eDp5"}
            async with http.get(f"{app.http_url}/v1/models", headers=headers) as resp:
                assert resp.status == 200
    finally:
        await app.stop()


def one_outcome() -> router_pb2.RecordOutcomeRequest:
    return router_pb2.RecordOutcomeRequest(
        outcomes=[router_pb2.Outcome(model=MODEL, provider="cerebras", success=True)]
    )


@pytest.mark.parametrize(
    ("sidecars_after", "expected"),
    [
        ('{token: "sidecar-secret-1", scopes: [rank]}', grpc.StatusCode.PERMISSION_DENIED),
        ('{token: "sidecar-secret-2", scopes: [rank, report]}', grpc.StatusCode.UNAUTHENTICATED),
    ],
    ids=["scope-removed", "token-revoked"],
)
async def test_an_open_outcome_stream_stops_when_its_caller_loses_report(
    token_router, tmp_path: Path, sidecars_after: str, expected: grpc.StatusCode
) -> None:
    # README: revoking a token "stops it within a second". Our sidecar opens short
    # calls, but a compromised caller can hold one StreamOutcomes call open as long
    # as its connection lives (up to an hour), and that call was admitted once: it
    # kept reporting after its token was revoked or its report scope removed.
    ledger = token_router.servicer.ledger
    async with grpc.aio.insecure_channel(token_router.grpc_address) as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        # The deadline only bounds how long a broken build takes to fail.
        call = stub.StreamOutcomes(metadata=bearer("sidecar-secret-1"), timeout=10)
        await call.write(one_outcome())
        await wait_for(lambda: ledger.accepted["app-sidecars"] == 1, timeout=5)
        reloads = token_router.security.tokens.reloads
        (tmp_path / "tokens.yaml").write_text(
            "callers:\n"
            f"  app-sidecars: {sidecars_after}\n"
            "  dashboards: {token_file: dash-token, scopes: [read]}\n"
        )
        await wait_for(lambda: token_router.security.tokens.reloads > reloads, timeout=5)
        # The router reads this batch before it ends the call, so the write goes through.
        await call.write(one_outcome())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == expected, err.value
        assert "after 1 batch(es) of this call were applied" in err.value.details()
    assert ledger.accepted["app-sidecars"] == 1
    assert token_router.servicer.rpc_counter.counts[("StreamOutcomes", expected.name)] == 1


async def test_a_rotation_landing_during_a_reload_is_picked_up(
    token_router, tmp_path: Path, monkeypatch
) -> None:
    # The reload stamped its files after reading them, so a token file replaced while
    # the reload was reading it was recorded as loaded: the new token never took
    # effect (until some later change). Here the rotation lands right after the read.
    dash = tmp_path / "dash-token"
    real_read_text = Path.read_text
    landed = []

    def read_text_then_rotate(self: Path, *args, **kwargs) -> str:
        text = real_read_text(self, *args, **kwargs)
        if self == dash and not landed:
            landed.append(True)
            rotated = tmp_path / "dash-token.new"
            rotated.write_text("dash-token-22\n")
            rotated.replace(dash)  # a new inode, as a Secret volume's swap gives
        return text

    monkeypatch.setattr(Path, "read_text", read_text_then_rotate)
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(tokens.read_text() + "# touched\n")  # triggers a reload
    async with grpc.aio.insecure_channel(token_router.grpc_address) as ch:
        stub = router_pb2_grpc.RouterStub(ch)

        async def rotated() -> bool:
            call = stub.ListModels(router_pb2.ListModelsRequest(), metadata=bearer("dash-token-22"))
            return await code_of(call) == grpc.StatusCode.OK

        await wait_for(lambda: landed, timeout=5)
        await wait_for(rotated, timeout=5)


async def test_http_side_takes_read_tokens(token_router) -> None:
    url = token_router.http_url
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/healthz") as resp:
            assert resp.status == 200  # probes stay open
        async with http.get(f"{url}/metrics") as resp:
            assert resp.status == 401 and "Basic" in resp.headers["WWW-Authenticate"]
        headers = {"Authorization": "Bearer sidecar-secret-1"}
        async with http.get(f"{url}/v1/models", headers=headers) as resp:
            assert resp.status == 403  # no read scope
        headers = {"Authorization": "Bearer dash-token-1"}
        async with http.get(f"{url}/metrics", headers=headers) as resp:
            text = await resp.text()
            assert resp.status == 200 and 'router_http_refused_total{code="401"} 1.0' in text
            assert "dash-token-1" not in text and "sidecar-secret-1" not in text
        basic = base64.b64encode(b"anyone:dash-token-1").decode()
        async with http.get(f"{url}/", headers={"Authorization": f"Basic {basic}"}) as resp:
            assert resp.status == 200  # a browser's Basic prompt opens the dashboard


def test_tokens_file_errors_name_the_key_never_the_token(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    cases = {
        "callers: {a: {token: short, scopes: [rank]}}": "callers.a: token must be at least 8",
        "callers: {a: {token: long-enough-1, scopes: [admin]}}": (
            'callers.a.scopes[0]: unknown scope "admin" (allowed: ["rank", "report", "read"])'
        ),
        "callers: {a: {token_file: missing, scopes: [rank]}}": "callers.a.token_file",
        "callers: {a: {token: long-enough-1, scopes: [rank]}, b: {token: long-enough-1, "
        "scopes: [read]}}": "callers.b: token is the same",
        # No gRPC client can send these (it refuses the metadata value itself).
        'callers: {a: {token: "long-enough-1\u00e9", scopes: [rank]}}': "must be printable ASCII",
        'callers: {a: {token: "long-enough-1\\a", scopes: [rank]}}': "must be printable ASCII",
    }
    for text, expected in cases.items():
        path.write_text(text)
        with pytest.raises(AuthConfigError) as info:
            parse_tokens_file(path)
        assert expected in str(info.value)
        assert "long-enough-1" not in str(info.value)


# -- TLS and mTLS ------------------------------------------------------------------


def _write(tmp_path: Path, name: str, blob) -> str:
    path = tmp_path / name
    blob.write_to_path(str(path))
    return str(path)


@pytest.fixture
def pki(tmp_path: Path):
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("sidecar-a.example", common_name="sidecar-a")
    files = {
        "ca": _write(tmp_path, "ca.pem", ca.cert_pem),
        "cert": _write(tmp_path, "server.pem", server.private_key_and_cert_chain_pem),
        "key": _write(tmp_path, "server.key", server.private_key_pem),
        "client_cert": _write(tmp_path, "client.pem", client.cert_chain_pems[0]),
        "client_key": _write(tmp_path, "client.key", client.private_key_pem),
    }
    return ca, files


def _creds(files: dict, with_client: bool = True) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=Path(files["ca"]).read_bytes(),
        private_key=Path(files["client_key"]).read_bytes() if with_client else None,
        certificate_chain=Path(files["client_cert"]).read_bytes() if with_client else None,
    )


async def test_mtls_names_the_caller_by_its_certificate_and_reloads(tmp_path: Path, pki) -> None:
    ca, files = pki
    app = loopback_router(
        tmp_path,
        drain_seconds=0.2,
        watch_catalog=False,
        security=SecuritySettings(
            tls_cert=files["cert"], tls_key=files["key"], tls_client_ca=files["ca"]
        ),
    )
    await app.start()
    try:
        options = (("grpc.ssl_target_name_override", "localhost"),)
        async with grpc.aio.secure_channel(app.grpc_address, _creds(files), options) as ch:
            stub = router_pb2_grpc.RouterStub(ch)
            assert (await stub.RankProviders(RANK)).endpoints
            ack = await stub.RecordOutcome(
                router_pb2.RecordOutcomeRequest(
                    outcomes=[router_pb2.Outcome(model=MODEL, provider="cerebras", success=True)]
                )
            )
            assert ack.accepted == 1
        assert app.servicer.ledger.accepted == {"sidecar-a": 1}
        # No client certificate: the handshake is refused.
        no_cert = _creds(files, with_client=False)
        async with grpc.aio.secure_channel(app.grpc_address, no_cert, options) as ch:
            call = router_pb2_grpc.RouterStub(ch).RankProviders(RANK, timeout=2)
            assert await code_of(call) == grpc.StatusCode.UNAVAILABLE
        # The HTTP side serves TLS too and accepts the verified client certificate.
        context = ssl.create_default_context(cafile=files["ca"])
        context.load_cert_chain(files["client_cert"], files["client_key"])
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{app.http_url}/v1/models", ssl=context) as resp,
        ):
            assert resp.status == 200
        # Rotate the server certificate (a new CA's); new connections use it.
        ca2 = trustme.CA()
        server2 = ca2.issue_cert("127.0.0.1", "localhost")
        server2.private_key_and_cert_chain_pem.write_to_path(files["cert"])
        server2.private_key_pem.write_to_path(files["key"])
        client2 = ca.issue_cert("sidecar-b.example", common_name="sidecar-b")
        new_ca = tmp_path / "ca2.pem"
        ca2.cert_pem.write_to_path(str(new_ca))
        creds2 = grpc.ssl_channel_credentials(
            root_certificates=new_ca.read_bytes(),
            private_key=client2.private_key_pem.bytes(),
            certificate_chain=client2.cert_chain_pems[0].bytes(),
        )
        async with grpc.aio.secure_channel(app.grpc_address, creds2, options) as ch:
            assert (await router_pb2_grpc.RouterStub(ch).RankProviders(RANK)).endpoints
    finally:
        await app.stop()


async def test_protected_mode_binds_loopback_unless_authenticated_or_allowed(
    tmp_path: Path,
) -> None:
    tokens = write_tokens(tmp_path)
    cases = [
        (SecuritySettings(), "127.0.0.1"),
        (SecuritySettings(allow_unauthenticated=True), "0.0.0.0"),
        (SecuritySettings(auth_tokens=str(tokens)), "0.0.0.0"),
    ]
    for security, expected in cases:
        app = loopback_router(
            tmp_path,
            grpc_host="0.0.0.0",
            http_host="0.0.0.0",
            drain_seconds=0.1,
            watch_catalog=False,
            security=security,
        )
        await app.start()
        try:
            assert (app.grpc_host, app.http_host) == (expected, expected)
        finally:
            await app.stop()


@pytest.mark.parametrize("host", ["::1", "[::1]", "::"])
async def test_an_ipv6_host_serves_grpc_and_http(tmp_path: Path, host: str) -> None:
    # gRPC read "::1:0" as a host with no port and bound nothing: --host ::1 or :: failed.
    app = loopback_router(
        tmp_path,
        grpc_host=host,
        http_host=host,
        drain_seconds=0.1,
        watch_catalog=False,
        security=SecuritySettings(allow_unauthenticated=host == "::"),
    )
    await app.start()
    try:
        assert app.grpc_address == f"[::1]:{app.grpc_port}"
        async with grpc.aio.insecure_channel(app.grpc_address) as ch:
            reply = await router_pb2_grpc.RouterStub(ch).RankProviders(RANK)
            assert reply.endpoints
        async with aiohttp.ClientSession() as http, http.get(f"{app.http_url}/healthz") as resp:
            assert resp.status == 200
    finally:
        await app.stop()


async def test_protected_mode_warns_once_for_both_ports(tmp_path: Path, caplog) -> None:
    app = loopback_router(
        tmp_path, grpc_host="0.0.0.0", http_host="0.0.0.0", drain_seconds=0.1, watch_catalog=False
    )
    await app.start()
    await app.stop()
    assert sum("protected mode" in r.getMessage() for r in caplog.records) == 1
