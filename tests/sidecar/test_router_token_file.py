"""The sidecar's router token file: what is read from it is exactly the token."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sidecar.router_channel import TokenFile, open_router_channel


def test_a_byte_order_mark_and_line_end_are_not_part_of_the_token(tmp_path: Path) -> None:
    # Windows editors save UTF-8 with a BOM; the router strips it (auth.py), so the
    # sidecar must too, or every call is UNAUTHENTICATED with nothing logged.
    path = tmp_path / "token"
    path.write_bytes("\ufeffs3cret-token\r\n".encode())
    assert TokenFile(str(path)).current() == "s3cret-token"


def test_a_token_grpc_cannot_send_is_refused_at_start_and_never_replaces_a_good_one(
    tmp_path: Path,
) -> None:
    # gRPC refuses a metadata value outside printable ASCII in the client, so every
    # call to the router failed with an opaque INTERNAL "execute_batch" error.
    path = tmp_path / "token"
    path.write_text("s3cret-t\u00f6ken\n")
    with pytest.raises(ValueError, match="not printable ASCII"):
        TokenFile(str(path))
    path.write_text("s3cret-token\n")
    token = TokenFile(str(path), check_every_s=0)
    path.write_text("s3cret-t\u00f6ken-2\n")
    assert token.current() == "s3cret-token"


async def test_a_token_sent_without_tls_is_said_at_start(tmp_path: Path, caplog, pki_files) -> None:
    # The token crosses the network in clear text without --router-ca: say so once.
    path = tmp_path / "token"
    path.write_text("s3cret-token\n")
    caplog.set_level(logging.WARNING, logger="sidecar.router_channel")
    plain = open_router_channel("127.0.0.1:1", [], token_file=str(path))
    secure = open_router_channel("127.0.0.1:1", [], token_file=str(path), ca=pki_files)
    await plain.close()
    await secure.close()
    warned = [r for r in caplog.records if "without TLS" in r.getMessage()]
    assert len(warned) == 1 and "s3cret-token" not in caplog.text


@pytest.fixture
def pki_files(tmp_path: Path) -> str:
    import trustme

    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)
