"""A provider answering a chat request with a status no OpenAI-compatible API uses.

Found by a black-box audit: a provider's 204 or 304 reached the app as an
empty "success" (no answer, no ``routing``), a 201 carrying an error body as
a success, and a 302 was followed as a GET whose 405 was passed on as the
app's mistake. Such statuses are the endpoint misbehaving, like a 5xx: the
next provider is tried, and when none is left the app gets the README's 502.
Real router, real sidecar, the ``openai`` client, a real HTTP upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import openai
import pytest
from aiohttp import web
from sidecar_helpers import MODEL, Stack, key_env, openai_client

MSGS = [{"role": "user", "content": "hi"}]


@asynccontextmanager
async def odd_upstream(status: int) -> AsyncIterator[tuple[str, list[str]]]:
    """An upstream answering every request with ``status``; yields its URL and the methods seen."""
    seen: list[str] = []

    async def any_request(request: web.Request) -> web.Response:
        seen.append(request.method)
        await request.read()
        if status in (204, 304):
            return web.Response(status=status)
        headers = {"Location": "/v1/elsewhere"} if 300 <= status < 400 else None
        return web.json_response({"error": {"message": "odd"}}, status=status, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/v1/{tail:.*}", any_request)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1", seen
    finally:
        await runner.cleanup()


async def _start(stack: Stack, tmp_path: Path, alpha_url: str):
    await stack.add_providers({"beta": {}})
    beta = stack.providers["beta"]
    stack.catalog_path = tmp_path / "catalog.yaml"
    stack.catalog_path.write_text(
        "providers:\n"
        f'  alpha: {{base_url: "{alpha_url}"}}\n'
        f'  beta: {{base_url: "{beta.base_url}", api_key_env: {key_env("beta")}}}\n'
        "models:\n"
        f"  {MODEL}:\n"
        "    endpoints:\n"
        "      - {provider: alpha, input_price_per_million: 1, output_price_per_million: 1}\n"
        "      - {provider: beta, input_price_per_million: 2, output_price_per_million: 2}\n"
    )
    router = await stack.start_router()
    return await stack.start_sidecar(router.grpc_address)


STATUSES = [201, 204, 302, 304, 307]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("status", STATUSES)
async def test_an_odd_status_is_a_server_error_and_the_next_provider_answers(
    stack: Stack, tmp_path: Path, status: int, stream: bool
) -> None:
    async with odd_upstream(status) as (url, seen):
        sc = await _start(stack, tmp_path, url)
        raw = await openai_client(sc).chat.completions.with_raw_response.create(
            model=MODEL,
            messages=MSGS,
            max_tokens=4,
            stream=stream,
            extra_body={"provider": {"order": ["alpha", "beta"]}},
        )
        if stream:
            routing = None
            async for chunk in raw.parse():
                routing = (chunk.model_extra or {}).get("routing", routing)
        else:
            routing = raw.parse().model_extra["routing"]
    assert raw.status_code == 200 and raw.headers["x-router-provider"] == "beta"
    assert routing is not None
    first = routing["attempts"][0]
    assert (first["provider"], first["http_status"], first["error_class"]) == (
        "alpha",
        status,
        "server_error",
    )
    assert seen == ["POST"]  # a redirect is not followed


@pytest.mark.parametrize("status", STATUSES)
async def test_an_odd_status_from_the_only_provider_is_a_502(
    stack: Stack, tmp_path: Path, status: int
) -> None:
    async with odd_upstream(status) as (url, _):
        sc = await _start(stack, tmp_path, url)
        with pytest.raises(openai.APIStatusError) as err:
            await openai_client(sc).chat.completions.create(
                model=MODEL,
                messages=MSGS,
                max_tokens=4,
                extra_body={"provider": {"only": ["alpha"]}},
            )
    assert err.value.status_code == 502
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == "all_providers_failed"
