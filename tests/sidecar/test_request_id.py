"""Every chat answer carries ``x-request-id``: the app's own when plausible, else a made
one; the access line names the same id, so one request is followed across both logs."""

from __future__ import annotations

import logging
import re

import aiohttp
import pytest
from sidecar_helpers import MODEL, Stack

from sidecar.request_id import MAX_LENGTH

SERVERS = pytest.mark.parametrize("server", ["lean", "aiohttp"])
MADE = re.compile(r"[0-9a-f]{16}-[0-9a-f]+")
MSGS = [{"role": "user", "content": "hi"}]


def _access_ids(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.request_id  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "sidecar" and r.getMessage() == "request"
    ]


@SERVERS
async def test_the_apps_id_is_kept_and_a_missing_or_odd_one_is_made(
    stack: Stack, server: str, caplog: pytest.LogCaptureFixture
) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    sc = await stack.start_sidecar(fallback=True, http_server=server)
    url = sc.base_url + "/chat/completions"
    sent: list[str | None] = ["app-42/x.y", None, None, "has space", "x" * (MAX_LENGTH + 1)]
    got: list[str] = []
    with caplog.at_level(logging.INFO, logger="sidecar"):
        async with aiohttp.ClientSession() as session:
            for i, given in enumerate(sent):
                headers = {} if given is None else {"X-Request-Id": given}
                body = {"model": MODEL, "messages": MSGS, "max_tokens": 3, "stream": i % 2 == 0}
                async with session.post(url, json=body, headers=headers) as r:
                    assert r.status == 200
                    await r.read()
                    got.append(r.headers["x-request-id"])
            # A refusal carries one too.
            async with session.post(url, data=b"{not json", headers={"X-Request-Id": "bad-1"}) as r:
                assert r.status == 400 and r.headers["x-request-id"] == "bad-1"
    assert got[0] == "app-42/x.y"  # kept, on a streamed answer
    assert all(MADE.fullmatch(made) for made in got[1:]), got
    assert len(set(got)) == len(got)  # every made id is new
    assert _access_ids(caplog) == [*got, "bad-1"]
