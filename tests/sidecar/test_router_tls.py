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

import pytest
import trustme
from cryptography.hazmat.primitives import serialization


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
