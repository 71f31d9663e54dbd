"""The sidecar's router token file: what is read from it is exactly the token."""

from __future__ import annotations

from pathlib import Path

from sidecar.router_channel import TokenFile


def test_a_byte_order_mark_and_line_end_are_not_part_of_the_token(tmp_path: Path) -> None:
    # Windows editors save UTF-8 with a BOM; the router strips it (auth.py), so the
    # sidecar must too, or every call is UNAUTHENTICATED with nothing logged.
    path = tmp_path / "token"
    path.write_bytes("\ufeffs3cret-token\r\n".encode())
    assert TokenFile(str(path)).current() == "s3cret-token"
