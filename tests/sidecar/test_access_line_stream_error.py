"""A stream that breaks after its first token keeps status 200 (its headers were sent),
so the access line names how it ended: ``stream_error``, the attempt's error class, the
same value ``routing.attempts[].error_class`` carries. A clean answer has no such field."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from sidecar_helpers import MODEL, Stack

MSGS = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("server", ["lean", "aiohttp"])
async def test_the_access_line_names_a_stream_that_broke_after_its_first_token(
    stack: Stack, server: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Paced, so the tokens reach the app before the error event does.
    await stack.add_providers({"alpha": {"tokens_per_second": 40.0}, "beta": {}})
    stack.providers["alpha"].add_incident("error_event", after_tokens=2)
    stack.write_catalog()
    sc = await stack.start_sidecar(fallback=True, http_server=server)
    url = sc.base_url + "/chat/completions"
    with caplog.at_level(logging.INFO, logger="sidecar"):
        async with aiohttp.ClientSession() as session:
            for name in ("alpha", "beta"):
                body = {
                    "model": MODEL,
                    "messages": MSGS,
                    "max_tokens": 6,
                    "stream": True,
                    "provider": {"order": [name]},
                }
                async with session.post(url, json=body) as r:
                    assert r.status == 200
                    data = await r.read()
                    assert (b'"error"' in data) is (name == "alpha")
    lines = [r for r in caplog.records if r.name == "sidecar" and r.getMessage() == "request"]
    assert [(r.provider, r.status) for r in lines] == [("alpha", 200), ("beta", 200)]  # type: ignore[attr-defined]
    assert lines[0].stream_error == "stream_abort"  # type: ignore[attr-defined]
    assert not hasattr(lines[1], "stream_error")
