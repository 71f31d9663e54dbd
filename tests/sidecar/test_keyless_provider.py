"""A provider whose catalog entry names no ``api_key_env`` needs no key (issue 12, item 1).

The sidecar calls it with no Authorization header and no key variable set,
both through the router's ranking and from the fallback catalog.
"""

from __future__ import annotations

import pytest
from sidecar_helpers import MODEL, Stack, openai_client
from sidecar_helpers import test_settings as sidecar_settings

from sidecar.app import SidecarApp

MSGS = [{"role": "user", "content": "hi"}]


def _keyless_catalog(stack: Stack) -> None:
    fp = stack.providers["local"]
    assert stack.tmp is not None
    stack.catalog_path = stack.tmp / "catalog.yaml"
    stack.catalog_path.write_text(
        "providers:\n"
        f'  local: {{base_url: "{fp.base_url}"}}\n'
        "models:\n"
        f"  {MODEL}:\n"
        "    endpoints:\n"
        "      - {provider: local, input_price_per_million: 1, output_price_per_million: 1}\n"
    )


@pytest.mark.parametrize("source", ["router", "catalog"])
async def test_keyless_provider_is_called_without_authorization(stack: Stack, source: str) -> None:
    await stack.add_providers({"local": {"expected_api_key": None}})
    _keyless_catalog(stack)
    router_address = ""
    if source == "router":
        router_address = (await stack.start_router()).grpc_address
    # An empty environment: no key variable of any name is set.
    settings = sidecar_settings(
        router=router_address,
        fallback_catalog=str(stack.catalog_path) if source == "catalog" else None,
        environ={},
    )
    stack.sidecar = SidecarApp(settings)
    await stack._exit.enter_async_context(stack.sidecar)
    resp = await openai_client(stack.sidecar).chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=3
    )
    assert resp.choices[0].message.content
    assert resp.model_extra["routing"]["source"] == source
    rec = stack.providers["local"].requests[-1]
    assert rec.auth_present is False
