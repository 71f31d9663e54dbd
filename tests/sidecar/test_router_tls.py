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
import logging
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from sidecar_helpers import MODEL, Stack, openai_client, sidecar_process

from router_service.security import SecuritySettings
from tests.conftest import loopback_router, wait_for
from tests.k8s_volume import kubelet_swap


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


async def test_the_sidecar_takes_a_renewed_client_certificate_without_a_restart(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    # The sidecar read --router-tls-cert/--router-tls-key once: after a
    # cert-manager renewal it went on presenting the old certificate until that
    # expired and every call to the router failed.
    caplog.set_level(logging.INFO, logger="sidecar.router_channel")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = {name: stack.tmp / name for name in ("server.pem", "server.key", "ca.pem")}
    server.cert_chain_pems[0].write_to_path(str(files["server.pem"]))
    server.private_key_pem.write_to_path(str(files["server.key"]))
    ca.cert_pem.write_to_path(str(files["ca.pem"]))
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    router = await stack.start_router(
        security=SecuritySettings(
            tls_cert=str(files["server.pem"]),
            tls_key=str(files["server.key"]),
            tls_client_ca=str(files["ca.pem"]),
        )
    )
    secret = stack.tmp / "secret"
    secret.mkdir()

    def issue(version: str, name: str, key_of: str | None = None) -> None:
        leaf = ca.issue_cert(f"{name}.example", common_name=name)
        key = ca.issue_cert("x.example").private_key_pem if key_of else leaf.private_key_pem
        kubelet_swap(
            secret,
            version,
            {
                "tls.crt": leaf.cert_chain_pems[0].bytes(),
                "tls.key": key.bytes(),
                "ca.crt": ca.cert_pem.bytes(),
            },
        )

    issue("v1", "sidecar-old")
    sidecar = await stack.start_sidecar(
        router=router.grpc_address,
        router_ca=str(secret / "ca.crt"),
        router_tls_cert=str(secret / "tls.crt"),
        router_tls_key=str(secret / "tls.key"),
    )
    client = openai_client(sidecar)
    accepted = router.servicer.ledger.accepted

    async def attributed_to(name: str) -> bool:
        """One request; True once the router has credited an outcome to ``name``."""
        before = accepted[name]
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        return accepted[name] > before

    await wait_for(lambda: attributed_to("sidecar-old"), timeout=10)
    issue("v2", "sidecar-new")
    await wait_for(lambda: attributed_to("sidecar-new"), timeout=10)
    assert any(r.getMessage() == "router TLS files reloaded" for r in caplog.records)
    # A rotation whose key is not its certificate's: refused, said once, and the
    # previous identity goes on.
    issue("v3", "sidecar-broken", key_of="another certificate")

    def refused() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.getMessage() == "router TLS files unusable, keeping the previous ones"
        ]

    async def served_and_refused() -> bool:
        return await attributed_to("sidecar-new") and bool(refused())

    await wait_for(served_and_refused, timeout=10)
    assert "--router-tls-cert" in refused()[0].why and len(refused()) == 1
    await wait_for(lambda: attributed_to("sidecar-new"), timeout=10)
    assert "sidecar-broken" not in accepted


@pytest.mark.parametrize(
    ("flags", "env", "named"),
    [
        # An empty key beside a certificate: gRPC core aborted (SIGABRT, a C trace).
        (["--router-tls-cert", "{cert}", "--router-tls-key", ""], {}, "--router-tls-key"),
        # SIDECAR_ROUTER_CA= (a missing Secret key) alone: no TLS at all, silently.
        # Named as the variable and the flag it sets (router_common/cli_env.py), the
        # variable once: it read "... is empty (flag or env SIDECAR_ROUTER_CA)" too.
        ([], {"SIDECAR_ROUTER_CA": ""}, "SIDECAR_ROUTER_CA (sets --router-ca)"),
    ],
)
def test_an_empty_router_tls_flag_exits_2_naming_it(
    tmp_path: Path, flags: list[str], env: dict[str, str], named: str
) -> None:
    leaf = trustme.CA().issue_cert("sidecar-a.example")
    cert = tmp_path / "client.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    argv = [sys.executable, "-m", "sidecar.cli", "--router", "127.0.0.1:1"]
    argv += ["--listen", "127.0.0.1:0", *(f.format(cert=cert) for f in flags)]
    try:
        proc = subprocess.run(
            argv, env={**_env(), **env}, capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the sidecar started despite an empty {named}") from None
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"router-sidecar: {named} is empty"), proc.stderr
    assert proc.stderr.count("SIDECAR_ROUTER_CA") <= 1, proc.stderr
