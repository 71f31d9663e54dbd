"""A TLS rotation that goes wrong half-way, on the router's gRPC port.

Found by a fault audit: writing a rotation's key before its certificate (or a
truncated file) made the gRPC side log "TLS certificates reloaded" and hand
gRPC core a pair it then refused with plain-text lines on stderr, while the
HTTP side said "TLS files unusable, keeping the previous ones". Both sides now
check the pair the same way before using it, and say the same thing.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import grpc
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router_service.security import SecuritySettings
from tests.conftest import loopback_router, wait_for
from tests.k8s_volume import kubelet_swap

OPTIONS = (("grpc.ssl_target_name_override", "localhost"),)


async def _serving(address: str, ca: trustme.CA) -> bool:
    """A new connection's handshake succeeds against ``ca`` and the health check answers."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    async with grpc.aio.secure_channel(address, creds, OPTIONS) as ch:
        try:
            resp = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )
        except grpc.aio.AioRpcError:
            return False
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def _grpc_records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "router_service.listen"
        and r.getMessage() == message
        and getattr(r, "port", None) != "http"
    ]


async def test_a_half_written_rotation_keeps_the_previous_pair_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="router_service.listen")
    ca = trustme.CA()
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    first = ca.issue_cert("127.0.0.1", "localhost")
    first.private_key_and_cert_chain_pem.write_to_path(str(cert))
    first.private_key_pem.write_to_path(str(key))
    app = loopback_router(
        tmp_path,
        drain_seconds=0.2,
        watch_catalog=False,
        security=SecuritySettings(tls_cert=str(cert), tls_key=str(key)),
    )
    await app.start()
    try:
        assert await _serving(app.grpc_address, ca)
        # A rotation to a new CA's certificate, its key written first: for a while
        # the files hold the new key and the old certificate.
        ca2 = trustme.CA()
        second = ca2.issue_cert("127.0.0.1", "localhost")
        second.private_key_pem.write_to_path(str(key))
        # New handshakes go on with the previous pair (gRPC reads the files before
        # each one), and the log says so.
        assert await _serving(app.grpc_address, ca)
        assert not _grpc_records(caplog, "TLS certificates reloaded")
        refused = _grpc_records(caplog, "TLS files unusable, keeping the previous ones")
        assert "--tls-cert" in refused[0].error and "matching key" in refused[0].error
        # The certificate arrives: the next handshake uses the new pair.
        second.private_key_and_cert_chain_pem.write_to_path(str(cert))
        await wait_for(lambda: _serving(app.grpc_address, ca2), timeout=5)
        assert [r.port for r in _grpc_records(caplog, "TLS certificates reloaded")] == ["grpc"]
    finally:
        await app.stop()


async def _https_serving(port: int, ca: trustme.CA) -> bool:
    """A new HTTPS connection's handshake succeeds against ``ca``."""
    context = ssl.create_default_context(cafile=None)
    ca.configure_trust(context)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost"),
            timeout=3,
        )
    except (TimeoutError, OSError, ssl.SSLError):
        return False
    writer.close()
    return True


async def test_a_rotation_to_an_encrypted_key_keeps_the_previous_pair_and_names_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    # Without a passphrase callback OpenSSL asked for one: on the router's
    # terminal (the HTTP reload runs on the event loop: every call froze) or,
    # with none, "Enter PEM pass phrase:" on stderr and "(Invalid argument)".
    caplog.set_level(logging.INFO, logger="router_service.listen")
    ca = trustme.CA()
    first = ca.issue_cert("127.0.0.1", "localhost")
    secret = tmp_path / "secret"
    secret.mkdir()
    kubelet_swap(
        secret,
        "v1",
        {"tls.crt": first.cert_chain_pems[0].bytes(), "tls.key": first.private_key_pem.bytes()},
    )
    cert, key = secret / "tls.crt", secret / "tls.key"
    app = loopback_router(
        tmp_path,
        drain_seconds=0.2,
        watch_catalog=False,
        security=SecuritySettings(tls_cert=str(cert), tls_key=str(key), reload_interval_s=0.05),
    )
    await app.start()
    try:
        assert await _serving(app.grpc_address, ca)
        assert await _https_serving(app.http_port, ca)
        ca2 = trustme.CA()
        second = ca2.issue_cert("127.0.0.1", "localhost")
        plain = serialization.load_pem_private_key(second.private_key_pem.bytes(), None)
        encrypted = plain.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"a-passphrase"),
        )
        kubelet_swap(
            secret, "v2", {"tls.crt": second.cert_chain_pems[0].bytes(), "tls.key": encrypted}
        )

        def refused(port: str) -> list[logging.LogRecord]:
            return [
                r
                for r in caplog.records
                if r.getMessage() == "TLS files unusable, keeping the previous ones"
                and getattr(r, "port", None) == port
            ]

        # gRPC reads the files before a new handshake, HTTP on its poll.
        assert await _serving(app.grpc_address, ca)
        await wait_for(lambda: refused("http"), timeout=5)
        for port in ("grpc", "http"):
            assert f"--tls-key {key}: the private key is encrypted" in refused(port)[0].error
        assert await _https_serving(app.http_port, ca)
        assert "pass phrase" not in capfd.readouterr().err
        # The decrypted key arrives: both ports switch to the new pair.
        kubelet_swap(
            secret,
            "v3",
            {
                "tls.crt": second.cert_chain_pems[0].bytes(),
                "tls.key": second.private_key_pem.bytes(),
            },
        )
        await wait_for(lambda: _serving(app.grpc_address, ca2), timeout=5)
        await wait_for(lambda: _https_serving(app.http_port, ca2), timeout=5)
    finally:
        await app.stop()
