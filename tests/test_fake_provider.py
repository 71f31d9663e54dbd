"""Tests for the fake OpenAI-compatible provider.

Everything runs a real server on loopback (port 0) because the point of the fake
is to look like a real provider on the wire: the official ``openai`` client is
used for the happy paths, a raw aiohttp client for failures the SDK would hide
(retries, truncated streams, dropped sockets). Incident windows are driven by an
injected clock, so no test sleeps to wait for a window.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from fake_provider import (
    FakeProvider,
    FakeProviderConfig,
    Incident,
    build_app,
    parse_incident_spec,
)
from fake_provider.app import STATE_KEY
from tests.conftest import FakeClock

REPO_ROOT = Path(__file__).resolve().parents[1]
MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "say something"}]
FAST = FakeProviderConfig(ttft_median_ms=0.0, tokens_per_second=0.0)


def chat_body(**overrides: Any) -> dict[str, Any]:
    return {"model": "m", "messages": MESSAGES, **overrides}


def oai(fp: FakeProvider, api_key: str = "unused") -> openai.AsyncOpenAI:
    # max_retries=0: the SDK would otherwise retry 429/5xx and hide what the fake did.
    return openai.AsyncOpenAI(base_url=fp.base_url, api_key=api_key, max_retries=0)


async def read_sse(resp: aiohttp.ClientResponse) -> list[str]:
    """The ``data:`` payloads of an SSE response, in order."""
    events: list[str] = []
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            events.append(line[len("data: ") :])
    return events


# --- happy paths, through the official client ------------------------------------------


async def test_stream_with_usage_via_openai_client() -> None:
    async with FakeProvider(FAST) as fp, oai(fp) as client:
        stream = await client.chat.completions.create(
            model="zai/glm-4.7",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            max_tokens=5,
            stream_options={"include_usage": True},
        )
        contents: list[str] = []
        roles: list[str] = []
        finish: list[str] = []
        usage = None
        async for chunk in stream:
            assert chunk.object == "chat.completion.chunk"
            assert chunk.model == "zai/glm-4.7"
            if chunk.usage is not None:
                usage = chunk.usage
                assert chunk.choices == []
                continue
            delta = chunk.choices[0].delta
            if delta.role:
                roles.append(delta.role)
            if delta.content:
                contents.append(delta.content)
            if chunk.choices[0].finish_reason:
                finish.append(chunk.choices[0].finish_reason)
    assert len(contents) == 5
    assert roles == ["assistant"]
    assert finish == ["length"]
    assert usage is not None
    assert usage.completion_tokens == 5
    assert usage.total_tokens == usage.prompt_tokens + 5
    rec = fp.requests[-1]
    assert (rec.status, rec.outcome, rec.tokens, rec.stream) == (200, "ok", 5, True)
    assert rec.body["max_tokens"] == 5


async def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    async with (
        FakeProvider(FAST) as fp,
        aiohttp.ClientSession() as s,
        s.post(
            fp.base_url + "/chat/completions", json=chat_body(stream=True, max_tokens=3)
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = await read_sse(resp)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)
    assert len(chunks) == 4  # 3 tokens + finish chunk


async def test_non_stream_completion_with_usage() -> None:
    async with FakeProvider(FAST) as fp, oai(fp) as client:
        completion = await client.chat.completions.create(
            model="m",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=7,
        )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    content = completion.choices[0].message.content
    assert content is not None
    assert len(content.split()) == 7
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 7


async def test_max_completion_tokens_and_default() -> None:
    config = FakeProviderConfig(ttft_median_ms=0, tokens_per_second=0, default_max_tokens=4)
    async with FakeProvider(config) as fp, aiohttp.ClientSession() as s:
        url = fp.base_url + "/chat/completions"
        async with s.post(url, json=chat_body(max_completion_tokens=9, max_tokens=2)) as r:
            data = await r.json()
        assert data["usage"]["completion_tokens"] == 9
        async with s.post(url, json=chat_body()) as r:
            data = await r.json()
        assert data["usage"]["completion_tokens"] == 4
        assert data["choices"][0]["finish_reason"] == "stop"


async def test_ttft_lower_bound() -> None:
    config = FakeProviderConfig(ttft_median_ms=150, ttft_sigma=0, tokens_per_second=1000)
    async with FakeProvider(config) as fp, oai(fp) as client:
        start = time.perf_counter()
        stream = await client.chat.completions.create(
            model="m",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            max_tokens=3,
        )
        first: float | None = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter() - start
    assert first is not None
    assert first >= 0.150 * 0.8
    assert fp.requests[-1].planned_ttft_ms == pytest.approx(150.0)


async def test_lognormal_ttft_is_seeded_and_spread() -> None:
    config = FakeProviderConfig(ttft_median_ms=1, ttft_sigma=0.5, tokens_per_second=0, seed=7)
    planned: list[list[float | None]] = []
    for _ in range(2):
        async with FakeProvider(config) as fp, aiohttp.ClientSession() as s:
            for _ in range(5):
                async with s.post(fp.base_url + "/chat/completions", json=chat_body()) as r:
                    assert r.status == 200
            planned.append([r.planned_ttft_ms for r in fp.requests])
    assert planned[0] == planned[1]  # same seed, same draws
    assert len(set(planned[0])) > 1  # sigma > 0 actually varies


# --- random failures --------------------------------------------------------------------


async def test_error_rate_one_gives_500() -> None:
    config = FakeProviderConfig(ttft_median_ms=0, error_rate=1.0)
    async with FakeProvider(config) as fp, oai(fp) as client:
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(
                model="m",
                messages=MESSAGES,  # type: ignore[arg-type]
            )
    assert info.value.status_code == 500
    assert fp.requests[-1].status == 500
    assert fp.requests[-1].outcome == "error"


async def test_error_status_is_configurable() -> None:
    config = FakeProviderConfig(ttft_median_ms=0, error_rate=1.0, error_status=502)
    async with FakeProvider(config) as fp, aiohttp.ClientSession() as s:
        r = await s.post(fp.base_url + "/chat/completions", json=chat_body())
        assert r.status == 502
        body = await r.json()
    assert body["error"]["type"] == "server_error"


async def test_rate_limit_rate_one_gives_429_with_retry_after() -> None:
    config = FakeProviderConfig(ttft_median_ms=0, rate_limit_rate=1.0, retry_after_s=2.5)
    async with FakeProvider(config) as fp, aiohttp.ClientSession() as s:
        r = await s.post(fp.base_url + "/chat/completions", json=chat_body())
        assert r.status == 429
        assert r.headers["Retry-After"] == "3"
        assert r.headers["retry-after-ms"] == "2500"
        body = await r.json()
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert fp.requests[-1].outcome == "rate_limited"


async def test_seeded_error_rate_is_reproducible() -> None:
    config = FakeProviderConfig(ttft_median_ms=0, tokens_per_second=0, error_rate=0.5, seed=42)
    runs: list[list[int | None]] = []
    for _ in range(2):
        async with FakeProvider(config) as fp, aiohttp.ClientSession() as s:
            for _ in range(20):
                async with s.post(fp.base_url + "/chat/completions", json=chat_body()) as r:
                    await r.read()
            runs.append([r.status for r in fp.requests])
    assert runs[0] == runs[1]
    assert {200, 500} == set(runs[0])


# --- scripted incidents -----------------------------------------------------------------


async def test_fail_incident_only_inside_its_window() -> None:
    clock = FakeClock(0.0)
    config = FakeProviderConfig(
        ttft_median_ms=0,
        tokens_per_second=0,
        incidents=(Incident(kind="fail", status=503, start_s=10, end_s=20),),
    )
    statuses: dict[float, int] = {}
    async with FakeProvider(config, clock=clock) as fp, aiohttp.ClientSession() as s:
        for t in (0.0, 9.99, 10.0, 15.0, 19.99, 20.0, 100.0):
            clock.now = t
            async with s.post(fp.base_url + "/chat/completions", json=chat_body()) as r:
                await r.read()
                statuses[t] = r.status
    assert statuses == {
        0.0: 200,
        9.99: 200,
        10.0: 503,
        15.0: 503,
        19.99: 503,
        20.0: 200,
        100.0: 200,
    }
    assert [r.t for r in fp.requests] == [0.0, 9.99, 10.0, 15.0, 19.99, 20.0, 100.0]


async def test_incident_via_control_api_with_duration() -> None:
    clock = FakeClock(0.0)
    clock.now = 1000.0
    async with FakeProvider(FAST, clock=clock) as fp, aiohttp.ClientSession() as s:
        clock.now = 1050.0  # 50 s after start
        async with s.post(
            fp.root_url + "/_fake/incidents", json={"kind": "fail", "status": 503, "duration_s": 5}
        ) as r:
            assert r.status == 201
            created = await r.json()
        assert (created["start_s"], created["end_s"]) == (50.0, 55.0)
        url = fp.base_url + "/chat/completions"
        async with s.post(url, json=chat_body()) as r:
            assert r.status == 503
        clock.now = 1055.0
        async with s.post(url, json=chat_body()) as r:
            assert r.status == 200
        async with s.post(fp.root_url + "/_fake/incidents", json={"kind": "nope"}) as r:
            assert r.status == 400
        async with s.post(fp.root_url + "/_fake/incidents", json={"kind": "fail"}) as r:
            assert r.status == 201
        async with s.get(fp.root_url + "/_fake/incidents") as r:
            listed = await r.json()
        assert [i["active"] for i in listed["data"]] == [False, True]
        async with s.delete(fp.root_url + "/_fake/incidents") as r:
            assert r.status == 200
        async with s.post(url, json=chat_body()) as r:
            assert r.status == 200


async def test_slowdown_multiplies_ttft() -> None:
    config = FakeProviderConfig(ttft_median_ms=40, tokens_per_second=1000)
    async with FakeProvider(config) as fp, aiohttp.ClientSession() as s:
        fp.add_incident("slowdown", factor=3, duration_s=60)
        start = time.perf_counter()
        async with s.post(
            fp.base_url + "/chat/completions", json=chat_body(stream=True, max_tokens=2)
        ) as r:
            first: float | None = None
            async for raw in r.content:
                if raw.startswith(b"data: {") and first is None:
                    first = time.perf_counter() - start
    assert first is not None
    assert first >= 0.120 * 0.8
    rec = fp.requests[-1]
    assert rec.slowdown == 3.0
    assert rec.planned_ttft_ms == pytest.approx(120.0)


async def test_slowdown_window_with_fake_clock() -> None:
    clock = FakeClock(0.0)
    config = FakeProviderConfig(
        ttft_median_ms=1,
        tokens_per_second=0,
        incidents=(Incident(kind="slowdown", factor=5, start_s=30, end_s=60),),
    )
    async with FakeProvider(config, clock=clock) as fp, aiohttp.ClientSession() as s:
        for t in (29.0, 30.0, 59.0, 60.0):
            clock.now = t
            async with s.post(fp.base_url + "/chat/completions", json=chat_body()) as r:
                await r.read()
    assert [r.slowdown for r in fp.requests] == [1.0, 5.0, 5.0, 1.0]


async def test_drop_mid_stream_after_n_tokens() -> None:
    async with FakeProvider(FAST) as fp, aiohttp.ClientSession() as s:
        fp.add_incident("drop", after_tokens=3)
        contents: list[str] = []
        saw_done = False
        async with s.post(
            fp.base_url + "/chat/completions", json=chat_body(stream=True, max_tokens=10)
        ) as r:
            assert r.status == 200  # headers went out: this failure is after the first byte
            with pytest.raises(aiohttp.ClientPayloadError):
                async for raw in r.content:
                    line = raw.decode().strip()
                    if line == "data: [DONE]":
                        saw_done = True
                    elif line.startswith("data: "):
                        contents.append(json.loads(line[6:])["choices"][0]["delta"]["content"])
    assert len(contents) == 3
    assert not saw_done
    rec = fp.requests[-1]
    assert (rec.outcome, rec.tokens) == ("dropped", 3)


async def test_drop_is_seen_by_openai_client() -> None:
    async with FakeProvider(FAST) as fp, oai(fp) as client:
        fp.add_incident("drop", after_tokens=2)
        stream = await client.chat.completions.create(
            model="m",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            max_tokens=10,
        )
        got = 0
        with pytest.raises(Exception):  # noqa: B017 - httpx/openai wrap it differently by version
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    got += 1
        assert got == 2


async def test_hang_until_client_timeout() -> None:
    async with FakeProvider(FAST) as fp:
        fp.add_incident("hang")
        timeout = aiohttp.ClientTimeout(total=0.3)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            with pytest.raises(asyncio.TimeoutError):
                async with s.post(fp.base_url + "/chat/completions", json=chat_body()) as r:
                    await r.read()
        rec = fp.requests[-1]
        assert rec.outcome == "hang"
        assert rec.status is None


async def test_hang_does_not_block_shutdown() -> None:
    fp = FakeProvider(FAST)
    await fp.start()
    fp.add_incident("hang")
    async with aiohttp.ClientSession() as s:

        async def call() -> None:
            async with s.post(fp.base_url + "/chat/completions", json=chat_body()) as r:
                await r.read()

        task = asyncio.create_task(call())
        while not fp.requests:  # wait until the server is holding the request
            await asyncio.sleep(0.01)
        await asyncio.wait_for(fp.stop(), timeout=5)
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(task, timeout=5)


async def test_hang_released_when_client_leaves_even_without_handler_cancellation() -> None:
    """A plain runner (as a user of build_app might make) must not leak hung handlers."""
    app = build_app(FAST)
    runner = web.AppRunner(app)  # handler_cancellation defaults to False
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        state = app[STATE_KEY]
        state.add_incident(Incident(kind="hang"))
        timeout = aiohttp.ClientTimeout(total=0.2)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            with pytest.raises(asyncio.TimeoutError):
                async with s.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions", json=chat_body()
                ) as r:
                    await r.read()
        deadline = time.monotonic() + 5
        while state.records[-1].duration_ms is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert state.records[-1].duration_ms is not None
    finally:
        await asyncio.wait_for(runner.cleanup(), timeout=5)


async def test_refuse_closes_without_response() -> None:
    async with FakeProvider(FAST) as fp, aiohttp.ClientSession() as s:
        fp.add_incident("refuse", duration_s=100)
        with pytest.raises(aiohttp.ClientError):
            async with s.post(fp.base_url + "/chat/completions", json=chat_body()) as r:
                await r.read()
        assert fp.requests[-1].outcome == "refused"
        assert fp.requests[-1].status is None
        fp.clear_incidents()
        async with s.post(fp.base_url + "/chat/completions", json=chat_body()) as r:
            assert r.status == 200


# --- validation and auth ----------------------------------------------------------------


async def test_auth_wrong_missing_and_right_key_never_leaks() -> None:
    key = "sk-super-secret-4711"
    config = FakeProviderConfig(ttft_median_ms=0, tokens_per_second=0, expected_api_key=key)
    assert key not in repr(config)
    async with FakeProvider(config) as fp, aiohttp.ClientSession() as s:
        url = fp.base_url + "/chat/completions"
        async with s.post(url, json=chat_body(), headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
            text = await r.text()
            assert key not in text and "wrong" not in text
            assert json.loads(text)["error"]["code"] == "invalid_api_key"
        async with s.post(url, json=chat_body()) as r:
            assert r.status == 401
        async with s.post(url, json=chat_body(), headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status == 200
        async with s.get(fp.base_url + "/models") as r:
            assert r.status == 401
        async with s.get(fp.root_url + "/_fake/requests") as r:
            recorded = await r.text()
        async with s.get(fp.root_url + "/_fake/config") as r:
            cfg_text = await r.text()
    assert key not in recorded and key not in cfg_text
    assert json.loads(cfg_text)["api_key_required"] is True
    assert [(r.auth_present, r.auth_ok, r.status) for r in fp.requests] == [
        (True, False, 401),
        (False, False, 401),
        (True, True, 200),
    ]
    assert all("authorization" not in r.headers for r in fp.requests)
    assert key not in json.dumps([r.to_dict() for r in fp.requests])


async def test_openai_client_with_correct_key() -> None:
    config = FakeProviderConfig(ttft_median_ms=0, tokens_per_second=0, expected_api_key="k1")
    async with FakeProvider(config) as fp:
        async with oai(fp, api_key="k1") as client:
            done = await client.chat.completions.create(
                model="m",
                messages=MESSAGES,  # type: ignore[arg-type]
            )
            assert done.choices[0].message.content
        async with oai(fp, api_key="k2") as client:
            with pytest.raises(openai.AuthenticationError):
                await client.chat.completions.create(
                    model="m",
                    messages=MESSAGES,  # type: ignore[arg-type]
                )


@pytest.mark.parametrize(
    ("data", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"messages": MESSAGES}).encode(), "model"),
        (json.dumps({"model": "m"}).encode(), "messages"),
        (json.dumps({"model": "m", "messages": []}).encode(), "messages"),
        (json.dumps({"model": "m", "messages": MESSAGES, "max_tokens": 0}).encode(), "max_tokens"),
        (json.dumps({"model": "m", "messages": MESSAGES, "stream": "yes"}).encode(), "stream"),
    ],
)
async def test_bad_requests_get_400(data: bytes, param: str | None) -> None:
    async with (
        FakeProvider(FAST) as fp,
        aiohttp.ClientSession() as s,
        s.post(
            fp.base_url + "/chat/completions",
            data=data,
            headers={"Content-Type": "application/json"},
        ) as r,
    ):
        assert r.status == 400
        body = await r.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    assert fp.requests[-1].outcome == "bad_request"


async def test_unknown_model_404_and_models_listing() -> None:
    config = FakeProviderConfig(
        name="groq", ttft_median_ms=0, tokens_per_second=0, served_models=("a/x", "b/y")
    )
    async with FakeProvider(config) as fp, aiohttp.ClientSession() as s:
        async with s.post(fp.base_url + "/chat/completions", json=chat_body(model="c/z")) as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "model_not_found"
        async with s.post(fp.base_url + "/chat/completions", json=chat_body(model="a/x")) as r:
            assert r.status == 200
            assert r.headers["x-fake-provider"] == "groq"
        async with s.get(fp.base_url + "/models") as r:
            models = await r.json()
        async with s.get(fp.root_url + "/healthz") as r:
            assert (await r.json()) == {"status": "ok", "name": "groq"}
    assert [m["id"] for m in models["data"]] == ["a/x", "b/y"]


# --- record and control API -------------------------------------------------------------


async def test_record_is_bounded_and_control_api_reports_it() -> None:
    config = FakeProviderConfig(ttft_median_ms=0, tokens_per_second=0, record_limit=5)
    async with FakeProvider(config) as fp, aiohttp.ClientSession() as s:
        for i in range(8):
            async with s.post(
                fp.base_url + "/chat/completions",
                json=chat_body(user=f"u{i}"),
                headers={"X-Trace": str(i)},
            ) as r:
                await r.read()
        assert [r.seq for r in fp.requests] == [4, 5, 6, 7, 8]
        assert fp.requests[-1].headers["x-trace"] == "7"
        async with s.get(fp.root_url + "/_fake/requests") as r:
            listed = await r.json()
        assert listed["total_received"] == 8
        assert listed["record_limit"] == 5
        assert [d["body"]["user"] for d in listed["data"]] == ["u3", "u4", "u5", "u6", "u7"]
        async with s.get(fp.root_url + "/_fake/requests?limit=2") as r:
            assert len((await r.json())["data"]) == 2
        async with s.post(fp.root_url + "/_fake/reset") as r:
            assert r.status == 200
        assert fp.requests == []


async def test_reset_restores_configured_incidents_and_config() -> None:
    clock = FakeClock(0.0)
    config = FakeProviderConfig(
        ttft_median_ms=0, tokens_per_second=0, incidents=(Incident(kind="fail", start_s=100),)
    )
    async with FakeProvider(config, clock=clock) as fp, aiohttp.ClientSession() as s:
        fp.clear_incidents()
        fp.add_incident("refuse", start_in_s=200)
        async with s.post(fp.root_url + "/_fake/config", json={"error_rate": 1.0}) as r:
            assert r.status == 200
            assert (await r.json())["error_rate"] == 1.0
        async with s.post(fp.root_url + "/_fake/config", json={"name": "x"}) as r:
            assert r.status == 400
        fp.reset()
        assert fp.state.incidents == [Incident(kind="fail", start_s=100)]
        assert fp.state.config == config


async def test_port_zero_picks_distinct_free_ports() -> None:
    async with FakeProvider(FAST) as a, FakeProvider(FAST) as b:
        assert a.port != b.port and a.port > 0
        assert a.base_url == f"http://127.0.0.1:{a.port}/v1"


# --- config parsing and CLI -------------------------------------------------------------


def test_parse_incident_spec() -> None:
    assert parse_incident_spec("fail:503:10:20") == Incident("fail", 10, 20, status=503)
    assert parse_incident_spec("slowdown:3:30:60") == Incident("slowdown", 30, 60, factor=3)
    assert parse_incident_spec("slowdown:2.5:30") == Incident("slowdown", 30, None, factor=2.5)
    assert parse_incident_spec("drop:5:0:") == Incident("drop", 0, None, after_tokens=5)
    assert parse_incident_spec("hang:1:2") == Incident("hang", 1, 2)
    assert parse_incident_spec("refuse:7") == Incident("refuse", 7, None)
    for bad in ("explode:1:2", "fail:503", "fail:x:1:2", "hang", "fail:503:20:10"):
        with pytest.raises(ValueError):
            parse_incident_spec(bad)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        FakeProviderConfig(error_rate=1.5)
    with pytest.raises(ValueError):
        FakeProviderConfig(tokens_per_second=-1)
    with pytest.raises(ValueError, match="done_to_eof_ms"):
        FakeProviderConfig(done_to_eof_ms=-1)
    with pytest.raises(ValueError):
        Incident(kind="slowdown", factor=0)
    cfg = FakeProviderConfig(served_models=["a"])  # type: ignore[arg-type]
    assert cfg.served_models == ("a",)


async def test_cli_serves_logs_json_and_exits_on_sigterm() -> None:
    env = {**os.environ, "FAKE_KEY_TEST": "cli-secret-key", "PYTHONPATH": str(REPO_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fake_provider.cli",
        "--port", "0", "--name", "groq", "--ttft-ms", "0", "--tps", "0",
        "--api-key-env", "FAKE_KEY_TEST", "--incident", "slowdown:2:0:",
        env=env,
        cwd=str(REPO_ROOT),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        line = await asyncio.wait_for(proc.stderr.readline(), timeout=10)
        started = json.loads(line)
        assert started["msg"] == "listening"
        base_url = started["base_url"]
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                base_url + "/chat/completions",
                json=chat_body(messages=[{"role": "user", "content": "PROMPT-TEXT"}]),
                headers={"Authorization": "Bearer cli-secret-key"},
            ) as r,
        ):
            assert r.status == 200
            completion = (await r.json())["choices"][0]["message"]["content"]
        request_line = json.loads(await asyncio.wait_for(proc.stderr.readline(), timeout=10))
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), timeout=10)
        rest = (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert rc == 0
    assert request_line["status"] == 200 and request_line["model"] == "m"
    assert request_line["tokens"] == 32 and request_line["slowdown"] == 2.0
    everything = line.decode() + json.dumps(request_line) + rest
    for secret in ("PROMPT-TEXT", "cli-secret-key", completion):
        assert secret not in everything


def test_cli_flags_reach_the_config() -> None:
    from fake_provider.cli import build_parser, config_from_args

    args = build_parser().parse_args(["--ttft-ms", "7", "--done-to-eof-ms", "3"])
    cfg = config_from_args(args)
    assert cfg.ttft_median_ms == 7 and cfg.done_to_eof_ms == 3
    with pytest.raises(ValueError, match="done_to_eof_ms"):
        config_from_args(build_parser().parse_args(["--done-to-eof-ms", "-1"]))


def test_stream_fault_specs_parse() -> None:
    assert parse_incident_spec("role_drop:0") == Incident("role_drop", 0, None)
    assert parse_incident_spec("truncate:2:0:5") == Incident("truncate", 0, 5, after_tokens=2)
    assert parse_incident_spec("error_event:1:0") == Incident(
        "error_event", 0, None, after_tokens=1
    )


async def test_stream_faults_behave_like_careless_providers() -> None:
    """role_drop breaks after a role-only chunk; truncate ends cleanly with no finish;
    error_event quotes the caller's Authorization header in an SSE error event."""
    cfg = FakeProviderConfig(ttft_median_ms=0, tokens_per_second=0, expected_api_key="sk-k")
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    async with FakeProvider(cfg) as fp, aiohttp.ClientSession() as s:
        headers = {"Authorization": "Bearer sk-k"}
        fp.add_incident("truncate", after_tokens=1)
        async with s.post(fp.base_url + "/chat/completions", json=body, headers=headers) as r:
            data = await r.read()
        assert r.status == 200 and b'"role":"assistant","content":""' in data
        assert b'finish_reason":"' not in data and b"[DONE]" not in data
        fp.clear_incidents()
        fp.add_incident("error_event", after_tokens=0)
        async with s.post(fp.base_url + "/chat/completions", json=body, headers=headers) as r:
            data = await r.read()
        assert r.status == 200 and b'data: {"error"' in data and b"Bearer sk-k" in data
        fp.clear_incidents()
        fp.add_incident("role_drop")
        with pytest.raises(aiohttp.ClientPayloadError):
            async with s.post(fp.base_url + "/chat/completions", json=body, headers=headers) as r:
                await r.read()
        fp.clear_incidents()
        fp.add_incident("fail", status=429)
        async with s.post(fp.base_url + "/chat/completions", json=body, headers=headers) as r:
            assert r.status == 429 and r.headers["Retry-After"] == "1"
