"""The --redis URL's query and TLS (rediss://) against a real TLS redis-server.

redis-py reads every query parameter of the URL as a connection setting. The
router passed them through unchecked: ``?socket_timeout=abc`` killed it at
start with a traceback (exit 1, no flag named), ``?foo=bar`` made every
connection attempt fail with a traceback every 5 s while the replica served
unshared, and ``redis://...?ssl_ca_certs=`` did the same (a TLS setting on a
plain connection). Now only the TLS parameters a private CA or mutual TLS
needs are admitted, on rediss://, and anything else exits 2 naming it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from router_service.cli import main
from tests.conftest import EXAMPLE_CATALOG
from tests.replication.fleet import RedisServer, RouterProcess, endpoint_figures, outcome, send
from tests.replication.test_convergence import wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("redis://h:1/0?socket_timeout=abc", "query parameter 'socket_timeout' is not supported"),
        ("redis://h:1/0?foo=bar", "query parameter 'foo' is not supported"),
        ("redis://h:1/0?ssl_ca_certs={ca}", "'ssl_ca_certs' is a TLS setting: use rediss://"),
        ("rediss://h:1/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of none, optional"),
        ("rediss://h:1/0?ssl_check_hostname=perhaps", "ssl_check_hostname must be one of"),
        ("rediss://h:1/0?ssl_ca_certs=/nonexistent/ca.pem", "ssl_ca_certs file"),
        ("redis://h:1/0?password=hunter2", "not in the query"),
        ("redis://h:1/0?db=1&password=hunter2", "'db' is not supported"),
    ],
)
def test_a_query_redis_py_would_misread_exits_2_naming_it(
    query: str, message: str, tmp_path: Path, capsys
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    code = main(["--config", str(EXAMPLE_CATALOG), "--redis", query.format(ca=ca)])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "hunter2" not in err and "Traceback" not in err, err


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    out = tmp_path / "tls"
    out.mkdir()
    ca.cert_pem.write_to_path(str(out / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(out / "cert.pem"))
    cert.private_key_pem.write_to_path(str(out / "key.pem"))
    return out


def test_replicas_share_state_over_tls_with_a_private_ca(tmp_path: Path, tls_dir: Path) -> None:
    """rediss:// with ?ssl_ca_certs= (the README's form for a private CA) and a
    password file: outcomes reach the peer, and the password reaches no log."""
    password = "tls-pw-0123456789-SECRET"
    server = RedisServer(tmp_path / "redis", password=password, tls=tls_dir)
    server.start()
    secret = tmp_path / "password"
    secret.write_text(password)
    routers = [
        RouterProcess(tmp_path, f"r{i}", server.url, "--redis-password-file", str(secret))
        for i in range(2)
    ]
    try:
        for r in routers:
            r.start()
        for r in routers:
            r.wait_started()
        send(routers[0], [outcome("cerebras")] * 4)
        wait_until(lambda: endpoint_figures(routers[1])["cerebras"]["attempts"]["last_1h"] == 4)
        for r in routers:
            log = r.log_path.read_text()
            assert password not in log and "shared state loaded from redis" in log
    finally:
        for r in routers:
            r.kill()
        server.kill()
