"""A TLS rotation that goes wrong half-way, on the router's gRPC port.

Found by a fault audit: writing a rotation's key before its certificate (or a
truncated file) made the gRPC side log "TLS certificates reloaded" and hand
gRPC core a pair it then refused with plain-text lines on stderr, while the
HTTP side said "TLS files unusable, keeping the previous ones". Both sides now
check the pair the same way before using it, and say the same thing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router_service.security import SecuritySettings
from tests.conftest import loopback_router, wait_for

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
