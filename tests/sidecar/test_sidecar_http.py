"""Bad input never yields a 500, a hang or a traceback; health, models and metrics endpoints."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import openai
import pytest
from aiohttp import web
from sidecar_helpers import MODEL, Stack, key_env, key_value, openai_client

MSGS = [{"role": "user", "content": "hi"}]


async def _post(url: str, data: bytes | str, headers: dict | None = None) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url, data=data, headers=headers or {"Content-Type": "application/json"}) as r,
    ):
        return r.status, await r.json(content_type=None)


def _body(**kw: object) -> str:
    return json.dumps({"model": MODEL, "messages": MSGS, **kw})


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ("{not json", 400, "not valid JSON"),
        ("[1, 2]", 400, "JSON object"),
        (json.dumps({"messages": MSGS}), 400, "model"),
        (json.dumps({"model": 3, "messages": MSGS}), 400, "model"),
        (json.dumps({"model": MODEL}), 400, "messages"),
        (json.dumps({"model": MODEL, "messages": "hi"}), 400, "messages"),
        (_body(stream="yes"), 400, "stream"),
        (
            _body(stream=True, stream_options={"include_usage": "yes"}),
            400,
            'stream_options.include_usage must be a boolean, got "yes"',
        ),
        (_body(max_tokens="many"), 400, "max_tokens"),
        (_body(provider={"order": "alpha"}), 400, "provider.order"),
        (_body(provider={"sort": "fastest"}), 400, "provider.sort"),
        (_body(provider={"max_price": {"prompt": -1}}), 400, "provider.max_price.prompt"),
        (_body(provider={"preferred_max_latency": {"p42": 1}}), 400, "preferred_max_latency"),
        (_body(providerOptions={"gateway": {"zeroDataRetention": "y"}}), 400, "zeroDataRetention"),
        (
            _body(provider={"order": ["alpha"]}, providerOptions={"gateway": {"order": ["beta"]}}),
            400,
            "provider.order conflicts with providerOptions.gateway.order",
        ),
        (json.dumps({"model": "nobody/none", "messages": MSGS}), 404, "is not in the catalog"),
        (b"\xff\xfe\x00garbage", 400, "not valid JSON"),
    ],
)
async def test_bad_input_is_openai_shaped_4xx(
    stack: Stack, payload: str, status: int, needle: str
) -> None:
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.write_catalog()
    sc = await stack.start_sidecar(fallback=True)
    got, body = await _post(sc.base_url + "/chat/completions", payload)
    assert got == status, body
    assert needle in body["error"]["message"] or needle in str(body["error"].get("param"))
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert stack.counts() == {"alpha": 0, "beta": 0}


async def test_oversized_body_is_413(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    sc = await stack.start_sidecar(fallback=True, max_body_bytes=1000)
    big = _body(messages=[{"role": "user", "content": "x" * 5000}])
    status, body = await _post(sc.base_url + "/chat/completions", big)
    assert status == 413 and body["error"]["code"] == "body_too_large"

    async def chunks():  # no Content-Length: the limit must hold while reading too
        for _ in range(10):
            yield b"x" * 500

    async with (
        aiohttp.ClientSession() as s,
        s.post(sc.base_url + "/chat/completions", data=chunks()) as r,
    ):
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "body_too_large"


async def test_unknown_route_and_method(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    sc = await stack.start_sidecar(fallback=True)
    async with aiohttp.ClientSession() as s:
        async with s.get(sc.base_url + "/nothing") as r:
            assert r.status == 404 and "error" in await r.json()
        async with s.get(sc.base_url + "/chat/completions") as r:
            assert r.status == 405 and "error" in await r.json()
            assert "GET " in (await r.json())["error"]["message"]


@pytest.mark.parametrize("api", ["embeddings", "completions", "responses"])
async def test_an_openai_api_the_sidecar_does_not_serve_is_named_in_its_404(
    stack: Stack, api: str
) -> None:
    """Through the official SDK the 404 was ``Not Found`` alone: no word of which call
    was refused or what the sidecar does serve."""
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    sc = await stack.start_sidecar(fallback=True)
    client = openai_client(sc)
    calls = {
        "embeddings": lambda: client.embeddings.create(model=MODEL, input="x"),
        "completions": lambda: client.completions.create(model=MODEL, prompt="x"),
        "responses": lambda: client.responses.create(model=MODEL, input="x"),
    }
    with pytest.raises(openai.NotFoundError) as err:
        await calls[api]()
    error = err.value.body
    assert error["code"] is None and error["param"] is None
    assert f'POST "/v1/{api}"' in error["message"]
    assert "POST /v1/chat/completions" in error["message"]
    assert stack.counts() == {"alpha": 0}


async def test_health_ready_models_metrics(stack: Stack) -> None:
    await stack.add_providers({"alpha": {}, "beta": {}})
    stack.write_catalog()
    sc = await stack.start_sidecar(router="127.0.0.1:1")  # nothing there, no catalog
    root = sc.base_url.removesuffix("/v1")
    async with aiohttp.ClientSession() as s:
        async with s.get(root + "/healthz") as r:
            assert r.status == 200
        async with s.get(root + "/readyz") as r:
            assert r.status == 503 and (await r.json())["ready"] is False
        async with s.get(sc.base_url + "/models") as r:
            assert r.status == 503
    await sc.stop()
    sc = await stack.start_sidecar(router="127.0.0.1:1", fallback=True)
    root = sc.base_url.removesuffix("/v1")
    async with aiohttp.ClientSession() as s:
        async with s.get(root + "/readyz") as r:
            assert r.status == 200 and (await r.json())["fallback_catalog"] is True
        async with s.get(sc.base_url + "/models") as r:
            models = await r.json()
            assert [m["id"] for m in models["data"]] == [MODEL]
        status, _ = await _post(sc.base_url + "/chat/completions", _body(max_tokens=2))
        assert status == 200
        async with s.get(root + "/metrics") as r:
            text = await r.text()
    for name in (
        'router_sidecar_requests_total{status="200"} 1.0',
        'router_sidecar_attempts_total{error_class="none",provider="alpha"} 1.0',
        "router_sidecar_fallbacks_total",
        "router_sidecar_added_latency_seconds_bucket",
        "router_sidecar_outcome_queue_depth",
        "router_sidecar_outcomes_dropped_total",
    ):
        assert name in text, name


async def test_upstream_error_body_passed_on_without_key(stack: Stack) -> None:
    """A provider that echoes the key in its error body: the app gets the body, not the key."""

    async def echo(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        return web.json_response(
            {
                "error": {
                    "message": f"bad key {auth} ({auth[7:19]}...)",
                    "type": "invalid_request_error",
                }
            },
            status=401,
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        path = stack.tmp / "cat.yaml"
        path.write_text(
            "providers:\n"
            f"  echo: {{base_url: 'http://127.0.0.1:{port}/v1', api_key_env: {key_env('echo')}}}\n"
            f"models:\n  {MODEL}:\n    endpoints:\n"
            "      - {provider: echo, upstream_model: m, input_price_per_million: 1, "
            "output_price_per_million: 1}\n"
        )
        stack.catalog_path = path
        stack.providers = {}
        from dataclasses import replace

        from sidecar_helpers import test_settings

        from sidecar.app import SidecarApp

        sc = SidecarApp(
            replace(
                test_settings(fallback_catalog=str(path)),
                environ={key_env("echo"): key_value("echo")},
            )
        )
        await sc.start()
        stack.sidecar = sc
        status, body = await _post(sc.base_url + "/chat/completions", _body())
        # The sidecar's key was refused: a 502 naming the provider, never a 401 the
        # app's SDK would take for a problem with its own key.
        assert status == 502
        assert "provider echo rejected the sidecar's API key" in body["error"]["message"]
        assert "bad key" in body["error"]["message"]
        assert key_value("echo") not in json.dumps(body)
        assert "0123456789abcdef-SECRET" not in json.dumps(body)
        assert body["routing"]["attempts"][0]["error_class"] == "auth"
    finally:
        await runner.cleanup()


async def test_unparsable_http_is_one_warning_line_without_the_bytes(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an audit: aiohttp logged every request it could not parse at ERROR with a
    traceback quoting the raw bytes (here a header holding a token), one per request."""
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    sc = await stack.start_sidecar(fallback=True)
    secret = "Bearer app-token-" + "s" * 9000  # a header line over aiohttp's 8190 bytes
    caplog.set_level(logging.DEBUG)
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", sc.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: {secret}\r\n".encode()
            + b"Content-Length: 2\r\n\r\n{}"
        )
        await writer.drain()
        head = await reader.read(200)
        writer.close()
        assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0]
    server = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert not [r for r in server if r.levelno >= logging.ERROR or r.exc_info or r.exc_text]
    warnings = [r for r in server if r.getMessage() == "malformed HTTP request"]
    assert len(warnings) == 1 and warnings[0].cause == "LineTooLong"
    assert not any("app-token" in r.getMessage() + str(r.__dict__) for r in caplog.records)
    status, _ = await _post(sc.base_url + "/chat/completions", _body(max_tokens=2))
    assert status == 200  # and the sidecar serves on


async def test_the_sidecars_own_refusals_carry_the_readmes_codes(stack: Stack) -> None:
    """Every code of the README's "The sidecar's own refusals", sent as an app would."""
    import gzip

    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    sc = await stack.start_sidecar(fallback=True, max_body_bytes=20_000)
    url = sc.base_url + "/chat/completions"
    deep = '{"model": "m", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    cases: list[tuple[bytes | str, dict[str, str], int, str | None]] = [
        ("{not json", {}, 400, "invalid_json"),
        (b'{"model": "\xff"}', {}, 400, "invalid_json"),
        ('{"model": "m", "temperature": NaN}', {}, 400, "invalid_json"),
        (deep, {}, 400, "invalid_json"),
        (_body(max_tokens=-1), {}, 400, "invalid_request"),
        (
            gzip.compress(_body(messages=[{"role": "user", "content": "x" * 100_000}]).encode()),
            {"Content-Encoding": "gzip"},
            413,
            "body_too_large",
        ),
    ]
    for payload, headers, status, code in cases:
        got, body = await _post(url, payload, {"Content-Type": "application/json", **headers})
        assert (got, body["error"]["code"]) == (status, code), payload[:40]
        assert set(body["error"]) == {"message", "type", "param", "code"}
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            assert r.status == 405 and (await r.json())["error"]["code"] is None
            assert r.headers["Allow"] == "POST"  # RFC 9110: a 405 lists the allowed methods
        async with s.post(sc.base_url + "/nowhere", json={}) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] is None
    got, body = await _post(url, _body(max_tokens=2), {"Content-Type": "text/plain"})
    assert got == 200  # read as JSON whatever its Content-Type
    await sc.stop()
    sc = await stack.start_sidecar(router="127.0.0.1:1")  # nothing there, no catalog
    got, body = await _post(sc.base_url + "/chat/completions", _body(max_tokens=2))
    assert (got, body["error"]["code"]) == (503, "router_unavailable")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_body_that_does_not_decompress_is_a_400_without_a_traceback(
    stack: Stack, caplog: pytest.LogCaptureFixture, encoding: str
) -> None:
    """Found by an audit: a corrupt gzip or deflate body (the app's mistake) was a 500
    ``internal_error`` and two ERROR tracebacks, the sidecar's and aiohttp's (whose
    lingering read of the rest of the body met the same decoding error)."""
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    sc = await stack.start_sidecar(fallback=True)
    caplog.set_level(logging.DEBUG)
    url = sc.base_url + "/chat/completions"
    for _ in range(3):
        status, body = await _post(url, b"not compressed " * 100, {"Content-Encoding": encoding})
        assert (status, body["error"]["code"]) == (400, "invalid_json")
        assert body["error"]["message"] == f"request body is not valid {encoding} data"
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    warnings = [r for r in caplog.records if r.getMessage() == "malformed HTTP request"]
    assert len(warnings) <= 1  # aiohttp's, once per cause per 10 s
    status, _ = await _post(url, _body(max_tokens=2))
    assert status == 200  # and the sidecar serves on


def _metric(text: str, name: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


async def test_the_queue_depth_counts_outcomes_waiting_for_a_resend(stack: Stack) -> None:
    """Found by an audit: with the router down, ``router_sidecar_outcome_queue_depth``
    fell to 0 at the first failed delivery: outcomes formed into batches (kept and resent
    until acknowledged) were no longer counted, so an outage looked like an empty queue."""
    await stack.add_providers({"alpha": {}})
    stack.write_catalog()
    sc = await stack.start_sidecar(router="127.0.0.1:1", fallback=True)  # nothing there
    metrics_url = sc.base_url.removesuffix("/v1") + "/metrics"
    for _ in range(3):
        status, _ = await _post(sc.base_url + "/chat/completions", _body(max_tokens=2))
        assert status == 200
    async with aiohttp.ClientSession() as s:
        async with s.get(metrics_url) as r:
            failures = _metric(await r.text(), "router_sidecar_outcome_send_failures_total")
        deadline = asyncio.get_running_loop().time() + 10
        while True:  # until a delivery of all three has failed
            async with s.get(metrics_url) as r:
                text = await r.text()
            if _metric(text, "router_sidecar_outcome_send_failures_total") > failures:
                break
            assert asyncio.get_running_loop().time() < deadline, "no failed delivery"
            await asyncio.sleep(0.02)
    assert _metric(text, "router_sidecar_outcome_queue_depth") == 3
    assert _metric(text, "router_sidecar_outcomes_dropped_total") == 0
