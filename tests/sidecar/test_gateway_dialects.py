"""The routing options OpenRouter and Vercel AI Gateway document, sent as their users send them.

Found by an audit of the sidecar against the two gateways' public documentation
(OpenRouter's "Provider Routing" and model variants pages, Vercel's provider
options, filtering and compliance pages): apps migrating from either send
exactly what those pages show. Each test runs a real router over fake
providers on loopback: ``cheap`` (keeps data, the cheapest), ``mid`` and
``private`` (zero data retention, the dearest).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from sidecar_helpers import MODEL, Stack

from sidecar.app import SidecarApp

MSGS = [{"role": "user", "content": "hello there"}]


async def _stack(stack: Stack) -> SidecarApp:
    await stack.add_providers({"cheap": {}, "mid": {}, "private": {}})
    stack.write_catalog(zdr={"private": True}, prices={"cheap": 1.0, "mid": 2.0, "private": 3.0})
    router = await stack.start_router()
    return await stack.start_sidecar(router.grpc_address)


async def _post(sc: SidecarApp, **body: Any) -> tuple[int, dict[str, Any]]:
    """One non-streaming chat completion with ``body`` merged in: status and JSON answer."""
    payload = {"model": MODEL, "messages": MSGS, "max_tokens": 3, **body}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sc.base_url}/chat/completions", json=payload) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("gateway", "served"),
    [
        ({"disallowPromptTraining": True, "sort": "cost"}, "private"),
        ({"disallowPromptTraining": True, "zeroDataRetention": False, "sort": "cost"}, "private"),
        ({"disallowPromptTraining": False, "sort": "cost"}, "cheap"),
    ],
)
async def test_vercels_disallow_prompt_training_is_enforced_not_dropped(
    stack: Stack, gateway: dict[str, Any], served: str
) -> None:
    """Vercel's ``disallowPromptTraining: true`` routes only to providers that do not
    train on prompts; ignored like an unknown key, the prompt went to the cheapest
    provider, one that keeps data. The catalog records zero data retention, which
    Vercel documents as implying no training, so it is enforced as that."""
    sc = await _stack(stack)
    status, answer = await _post(sc, providerOptions={"gateway": gateway})
    assert status == 200, answer
    assert answer["routing"]["provider"] == served
    assert stack.counts()[served] == 1 and sum(stack.counts().values()) == 1
