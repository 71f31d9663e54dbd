"""A provider answering a chat request with a status no OpenAI-compatible API uses.

Found by a black-box audit: a provider's 204 or 304 reached the app as an
empty "success" (no answer, no ``routing``), a 201 carrying an error body as
a success, and a 302 was followed as a GET whose 405 was passed on as the
app's mistake. Such statuses are the endpoint misbehaving, like a 5xx: the
next provider is tried, and when none is left the app gets the README's 502.
Real router, real sidecar, the ``openai`` client, a real HTTP upstream.
"""

from __future__ import annotations

import email.utils
import time
from pathlib import Path

import openai
import pytest
from aiohttp import web
from sidecar_helpers import (
    MODEL,
    Stack,
    openai_client,
    over_hostile_alpha,
    raw_upstream,
    write_raw_catalog,
)

MSGS = [{"role": "user", "content": "hi"}]


def _odd(status: int, seen: list[str]):
    """A handler answering every request with ``status``, noting each method in ``seen``."""

    async def any_request(request: web.Request) -> web.Response:
        seen.append(request.method)
        await request.read()
        if status in (204, 304):
            return web.Response(status=status)
        headers = {"Location": "/v1/elsewhere"} if 300 <= status < 400 else None
        return web.json_response({"error": {"message": "odd"}}, status=status, headers=headers)

    return any_request


STATUSES = [201, 204, 302, 304, 307]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("status", STATUSES)
async def test_an_odd_status_is_a_server_error_and_the_next_provider_answers(
    stack: Stack, tmp_path: Path, status: int, stream: bool
) -> None:
    seen: list[str] = []
    async with over_hostile_alpha(stack, tmp_path, _odd(status, seen)) as sc:
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
    async with over_hostile_alpha(stack, tmp_path, _odd(status, [])) as sc:
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


def _rate_limited(retry_after: str):
    """A chat handler answering 429 with this ``Retry-After``."""

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        body = {"error": {"message": "slow down"}}
        return web.json_response(body, status=429, headers={"Retry-After": retry_after})

    return chat


@pytest.mark.parametrize("garbled", ["inf", "-Infinity", "1e400", "nan"])
async def test_a_retry_after_that_is_no_number_of_seconds_is_ignored(
    stack: Stack, tmp_path: Path, garbled: str
) -> None:
    """``float`` reads these; an infinite one made the app's Retry-After a 500."""
    async with raw_upstream(_rate_limited(garbled)) as a, raw_upstream(_rate_limited("2.5")) as b:
        stack.catalog_path = write_raw_catalog(tmp_path / "catalog.yaml", {"alpha": a, "beta": b})
        router = await stack.start_router()
        sc = await stack.start_sidecar(router.grpc_address)
        with pytest.raises(openai.RateLimitError) as err:
            await openai_client(sc).chat.completions.create(
                model=MODEL,
                messages=MSGS,
                max_tokens=4,
                extra_body={"provider": {"only": ["alpha"]}},
            )
        assert "Retry-After" not in err.value.response.headers  # alpha gave none usable
        with pytest.raises(openai.RateLimitError) as err:
            await openai_client(sc).chat.completions.create(
                model=MODEL, messages=MSGS, max_tokens=4
            )
    assert err.value.response.headers["Retry-After"] == "3"  # beta's 2.5, rounded up
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == "all_providers_rate_limited"
    attempts = {a["provider"]: a for a in err.value.response.json()["routing"]["attempts"]}
    assert "retry_after_s" not in attempts["alpha"] and attempts["beta"]["retry_after_s"] == 2.5


@pytest.mark.parametrize(
    ("given", "told"),
    [("0", "1"), ("86400", "60")],
    ids=["zero-is-one-second", "a-day-is-the-cooldown-cap"],
)
async def test_the_retry_after_told_to_the_app_is_rounded_and_bounded(
    stack: Stack, tmp_path: Path, given: str, told: str
) -> None:
    """The README's rule: the smallest Retry-After given, rounded up, at least 1 and at
    most ``--max-cooldown-s`` (60 s). A provider's "come back tomorrow" was told to the
    app as is, though this sidecar calls the provider again after its cooldown: a
    client honouring it stopped for a day. The attempt still reports what the provider
    said."""
    async with raw_upstream(_rate_limited(given)) as a:
        stack.catalog_path = write_raw_catalog(tmp_path / "catalog.yaml", {"alpha": a})
        router = await stack.start_router()
        sc = await stack.start_sidecar(router.grpc_address)
        with pytest.raises(openai.RateLimitError) as err:
            await openai_client(sc).chat.completions.create(model=MODEL, messages=MSGS)
    assert err.value.response.headers["Retry-After"] == told
    (attempt,) = err.value.response.json()["routing"]["attempts"]
    assert attempt["retry_after_s"] == float(given)


async def test_a_retry_after_date_is_counted_on_the_providers_own_clock(
    stack: Stack, tmp_path: Path
) -> None:
    """A provider whose clock is 2 hours ahead says "30 s after my now" as a date 2 h
    30 s ahead of ours: counted from our clock, that was a 7230 s wait told to the app
    and an ejection at the router's 600 s cap. Its own ``Date`` header is the reference."""
    provider_now = time.time() + 7200

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        headers = {
            "Date": email.utils.formatdate(provider_now, usegmt=True),
            "Retry-After": email.utils.formatdate(provider_now + 30, usegmt=True),
        }
        return web.json_response({"error": {"message": "slow down"}}, status=429, headers=headers)

    async with raw_upstream(chat) as a:
        stack.catalog_path = write_raw_catalog(tmp_path / "catalog.yaml", {"alpha": a})
        router = await stack.start_router()
        sc = await stack.start_sidecar(router.grpc_address)
        with pytest.raises(openai.RateLimitError) as err:
            await openai_client(sc).chat.completions.create(
                model=MODEL, messages=MSGS, max_tokens=4
            )
    assert err.value.response.headers["Retry-After"] == "30"
    (attempt,) = err.value.response.json()["routing"]["attempts"]
    assert attempt["retry_after_s"] == 30.0
