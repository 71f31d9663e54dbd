"""A provider whose catalog entry names no ``api_key_env`` needs no key (issue 12, item 1).

The sidecar calls it with no Authorization header and no key variable set,
both through the router's ranking and from the fallback catalog.
"""

from __future__ import annotations

import openai
import pytest
from sidecar_helpers import MODEL, Stack, key_env, key_value, openai_client
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


async def test_a_key_read_with_its_trailing_newline_still_works(stack: Stack) -> None:
    """Found by an audit: ``KEY=$'sk-...\\n'`` (a key file written with ``echo``) put a
    newline in the Authorization header, aiohttp refused to send it, and every request
    was a 500. Surrounding whitespace is not part of a key."""
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    router = await stack.start_router()
    settings = sidecar_settings(
        router=router.grpc_address, environ={key_env("alpha"): f"  {key_value('alpha')}\n"}
    )
    stack.sidecar = SidecarApp(settings)
    await stack._exit.enter_async_context(stack.sidecar)
    resp = await openai_client(stack.sidecar).chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=3
    )
    assert resp.choices[0].message.content
    assert stack.providers["alpha"].requests[-1].auth_ok is True


async def test_a_key_with_a_control_character_inside_counts_as_unset(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    router = await stack.start_router()
    settings = sidecar_settings(
        router=router.grpc_address, environ={key_env("alpha"): "sk-half\none-0123456789"}
    )
    stack.sidecar = SidecarApp(settings)
    await stack._exit.enter_async_context(stack.sidecar)
    with pytest.raises(openai.APIStatusError) as err:
        await openai_client(stack.sidecar).chat.completions.create(
            model=MODEL, messages=MSGS, max_tokens=3
        )
    assert err.value.status_code == 503  # no provider could be tried, not a 500
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == "no_provider_available"
    assert stack.providers["alpha"].requests == []
