"""The sidecar's TLS to the router (``--router-ca``, ``--router-tls-cert``/``--router-tls-key``)
as a platform engineer meets it: real certificates (trustme), real processes.

Found by a TLS audit: gRPC takes any bytes for the CA, certificate and key and
only fails when it dials, so a key that did not match its certificate, a CA
file holding no certificate or an encrypted key started a sidecar that then
failed every call to the router (``UNAVAILABLE``) with plain-text gRPC lines on
stderr while it served from its fallback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from sidecar_helpers import sidecar_process

from router_service.security import SecuritySettings
from tests.conftest import loopback_router


def _encrypted(key_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(key_pem, None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"a-passphrase"),
    )


def _env() -> dict[str, str]:
    """The sidecar's own default, not one the test runner may have set."""
    return {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("key of another certificate", "--router-tls-cert {cert} / --router-tls-key {key}"),
        ("CA file holding a key", "--router-ca {ca}: not a usable PEM CA certificate"),
        ("encrypted key", "--router-tls-key {key}: the private key is encrypted"),
        ("certificate and key swapped", "--router-tls-cert {key} / --router-tls-key {cert}"),
    ],
)
def test_unusable_router_tls_files_stop_the_sidecar_at_start_naming_the_flag(
    tmp_path: Path, case: str, named: str
) -> None:
    ca = trustme.CA()
    mine, other = ca.issue_cert("sidecar-a.example"), ca.issue_cert("sidecar-b.example")
    ca_file, cert, key = tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key"
    ca.cert_pem.write_to_path(str(ca_file))
    mine.cert_chain_pems[0].write_to_path(str(cert))
    mine.private_key_pem.write_to_path(str(key))
    flags = ["--router-ca", str(ca_file), "--router-tls-cert", str(cert), "--router-tls-key"]
    flags.append(str(key))
    if case == "key of another certificate":
        other.private_key_pem.write_to_path(str(key))
    elif case == "CA file holding a key":
        mine.private_key_pem.write_to_path(str(ca_file))
    elif case == "encrypted key":
        key.write_bytes(_encrypted(mine.private_key_pem.bytes()))
    else:
        flags[3], flags[5] = str(key), str(cert)
    argv = [sys.executable, "-m", "sidecar.cli", "--router", "127.0.0.1:1"]
    argv += ["--listen", "127.0.0.1:0", *flags]
    proc = subprocess.run(
        argv,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,  # no terminal for OpenSSL to ask a passphrase on
    )
    assert proc.returncode == 2, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]  # JSON only
    refused = [r for r in records if r["message"] == "cannot start"]
    expected = named.format(ca=ca_file, cert=cert, key=key)
    assert len(refused) == 1 and refused[0]["why"].startswith(expected), proc.stderr
    assert "a-passphrase" not in proc.stderr and "BEGIN" not in proc.stderr


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("a CA that did not sign it", "CERTIFICATE_VERIFY_FAILED"),
        ("a certificate that does not name 127.0.0.1", "Hostname"),
    ],
)
async def test_a_router_certificate_the_sidecar_refuses_is_named_in_one_json_line(
    tmp_path: Path, case: str, said: str
) -> None:
    # The sidecar logged only "router unreachable ... why: UNAVAILABLE" (the
    # reason was in the gRPC error it dropped) and gRPC core wrote a plain-text
    # "I... Handshake failed" line to its stderr on every reconnect.
    ca, other_ca = trustme.CA(), trustme.CA()
    leaf = ca.issue_cert("localhost") if "name" in case else ca.issue_cert("127.0.0.1")
    cert, key, trusted = tmp_path / "r.pem", tmp_path / "r.key", tmp_path / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    (other_ca if "CA" in case else ca).cert_pem.write_to_path(str(trusted))
    router = loopback_router(
        tmp_path,
        drain_seconds=0.2,
        watch_catalog=False,
        security=SecuritySettings(tls_cert=str(cert), tls_key=str(key)),
    )
    await router.start()
    try:
        flags = ("--router", router.grpc_address, "--router-ca", str(trusted))
        # A deadline no loaded machine meets by accident: the first failure is logged.
        flags += ("--router-retry-s", "0.1", "--rank-timeout-s", "20")
        async with sidecar_process(_env(), *flags) as sidecar:
            started = await sidecar.read_until("sidecar started")
            async with aiohttp.ClientSession() as http:
                for _ in range(3):  # reconnects, each a failed handshake
                    async with http.post(
                        f"{started['listen']}/chat/completions",
                        json={
                            "model": "zai/glm-4.7",
                            "messages": [{"role": "user", "content": "hi"}],
                        },
                    ) as resp:
                        assert resp.status == 503
            down = await sidecar.read_until("router unreachable")
            assert down["why"] == "UNAVAILABLE" and said in down["detail"], down
            sidecar.proc.terminate()
            assert await sidecar.exit_code() == 0
            sidecar.records()  # every stderr line is JSON
    finally:
        await router.stop()
