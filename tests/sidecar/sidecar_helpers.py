"""Helpers for the sidecar suite: fake providers, a real router and a sidecar, on loopback.

Everything listens on ports chosen by the OS. ``Stack`` writes a catalog whose
providers point at the fake providers, so the router's answers send the
sidecar to them; the API keys live only in the sidecar's (injected) environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fake_provider import FakeProvider, FakeProviderConfig
from sidecar.app import SidecarApp
from sidecar.config import SidecarSettings
from tests.conftest import wait_for as wait_for  # re-exported for the sidecar tests

MODEL = "zai/glm-4.7"


def key_env(name: str) -> str:
    return f"TEST_{name.upper()}_API_KEY"


def key_value(name: str) -> str:
    return f"sk-test-{name}-0123456789abcdef-SECRET"


def write_catalog(
    path: Path,
    providers: Mapping[str, FakeProvider],
    zdr: Mapping[str, bool],
    prices: Mapping[str, float] | None = None,
) -> Path:
    """A catalog YAML with one model served by every given fake provider."""
    lines = ["providers:"]
    for name, fp in providers.items():
        lines.append(
            f'  {name}: {{base_url: "{fp.base_url}", api_key_env: {key_env(name)}, '
            f"zero_data_retention: {str(zdr.get(name, False)).lower()}}}"
        )
    lines += ["models:", f"  {MODEL}:", "    endpoints:"]
    for i, name in enumerate(providers):
        price = (prices or {}).get(name, 1.0 + i)
        lines.append(
            f"      - {{provider: {name}, upstream_model: up-{name}, "
            f"input_price_per_million: {price}, output_price_per_million: {price}}}"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_settings(**over: Any) -> SidecarSettings:
    """Short timeouts and fast flushing so the suite is quick and deterministic."""
    base = SidecarSettings(
        router="",
        listen="127.0.0.1:0",
        connect_timeout_s=1.0,
        first_byte_timeout_s=1.0,
        chunk_timeout_s=1.0,
        nonstream_timeout_s=2.0,
        request_deadline_s=10.0,
        rank_timeout_s=0.5,
        rank_cache_ttl_s=0.2,
        router_retry_s=0.2,
        outcome_flush_interval_s=0.05,
        outcome_send_timeout_s=1.0,
        outcome_max_backoff_s=0.2,
        shutdown_grace_s=1.0,
    )
    return replace(base, **over)


@dataclass
class Stack:
    """Fake providers (+ optional router) + one sidecar, torn down together."""

    tmp: Path
    providers: dict[str, FakeProvider] = field(default_factory=dict)
    router: Any = None
    sidecar: SidecarApp | None = None
    catalog_path: Path | None = None
    _exit: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def add_providers(self, configs: Mapping[str, dict[str, Any]]) -> None:
        for name, kw in configs.items():
            kw = {
                "ttft_median_ms": 5.0,
                "tokens_per_second": 2000.0,
                "expected_api_key": key_value(name),
                **kw,
            }
            fp = FakeProvider(FakeProviderConfig(name=name, **kw), host="127.0.0.1", port=0)
            await self._exit.enter_async_context(fp)
            self.providers[name] = fp

    def write_catalog(
        self, zdr: Mapping[str, bool] | None = None, prices: Mapping[str, float] | None = None
    ) -> Path:
        self.catalog_path = write_catalog(
            self.tmp / "catalog.yaml", self.providers, zdr or {}, prices
        )
        return self.catalog_path

    async def start_router(self, port: int = 0, **over: Any) -> Any:
        """A real router on loopback; ``over`` overrides Settings (e.g. ``ranking=``)."""
        from router_service.app import RouterApp, Settings

        assert self.catalog_path is not None
        self.router = RouterApp(
            Settings(
                config_path=str(self.catalog_path),
                grpc_host="127.0.0.1",
                grpc_port=port,
                http_host="127.0.0.1",
                http_port=0,
                drain_seconds=0.2,
                watch_catalog=False,
                seed=7,
                refresh_min_interval_s=0.02,
                refresh_max_interval_s=0.1,
                **over,
            )
        )
        await self.router.start()
        return self.router

    async def stop_router(self) -> None:
        if self.router is not None:
            await self.router.stop()
            self.router = None

    async def start_sidecar(
        self, router: str = "", fallback: bool = False, **over: Any
    ) -> SidecarApp:
        env = {key_env(n): key_value(n) for n in self.providers}
        settings = test_settings(
            router=router,
            fallback_catalog=str(self.catalog_path) if fallback else None,
            **{"environ": env, **over},
        )
        self.sidecar = SidecarApp(settings)
        await self.sidecar.start()
        return self.sidecar

    async def close(self) -> None:
        while _OPEN_CLIENTS:
            await _OPEN_CLIENTS.pop().close()
        if self.sidecar is not None:
            await self.sidecar.stop()
        await self.stop_router()
        await self._exit.aclose()

    def counts(self) -> dict[str, int]:
        """Chat requests each provider received."""
        return {n: len(fp.requests) for n, fp in self.providers.items()}


#: Clients opened by the current test; Stack.close() closes them before the
#: servers stop, so no keep-alive connection outlives its event loop.
_OPEN_CLIENTS: list[Any] = []


def openai_client(sidecar: SidecarApp, **kw: Any) -> Any:
    """The official client pointed at the sidecar, with its own retries off (unless ``kw``
    gives ``max_retries``)."""
    import openai

    kw = {"max_retries": 0, "timeout": 20.0, **kw}
    client = openai.AsyncOpenAI(base_url=sidecar.base_url, api_key="unused-by-sidecar", **kw)
    _OPEN_CLIENTS.append(client)
    return client


@contextlib.asynccontextmanager
async def raw_upstream(handler: Any) -> Any:
    """A real HTTP server on loopback whose every ``/v1/...`` route is ``handler``; yields
    its base URL. For providers that misbehave in ways ``fake_provider`` does not script."""
    from aiohttp import web

    app = web.Application()
    app.router.add_route("*", "/v1/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


def write_raw_catalog(
    path: Path, urls: Mapping[str, str], keys: Mapping[str, str] | None = None
) -> Path:
    """A catalog of ``MODEL`` served by the providers at ``urls``, in that order (cheapest
    first); those named in ``keys`` need that key variable, the others none."""
    lines = ["providers:"]
    for name, url in urls.items():
        key = f", api_key_env: {keys[name]}" if keys and name in keys else ""
        lines.append(f'  {name}: {{base_url: "{url}"{key}}}')
    lines += ["models:", f"  {MODEL}:", "    endpoints:"]
    for i, name in enumerate(urls):
        lines.append(
            f"      - {{provider: {name}, input_price_per_million: {i + 1}, "
            f"output_price_per_million: {i + 1}}}"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.asynccontextmanager
async def over_hostile_alpha(
    stack: Stack, tmp_path: Path, handler: Any, **over: Any
) -> AsyncIterator[SidecarApp]:
    """A raw upstream answering with ``handler`` as ``alpha`` (no key, cheapest), a fake
    ``beta``, a router and a sidecar over them (``over`` overrides sidecar settings); yields
    the sidecar, and the raw upstream stops when the block ends."""
    async with raw_upstream(handler) as alpha_url:
        await stack.add_providers({"beta": {}})
        stack.catalog_path = write_raw_catalog(
            tmp_path / "catalog.yaml",
            {"alpha": alpha_url, "beta": stack.providers["beta"].base_url},
            {"beta": key_env("beta")},
        )
        router = await stack.start_router()
        yield await stack.start_sidecar(router.grpc_address, **over)


async def stream_text_and_routing(
    client: Any, messages: list[dict[str, str]], **prefs: Any
) -> tuple[str, dict[str, Any]]:
    """One streamed request through the official client with routing options ``prefs``:
    the answer's text and the ``routing`` object of its last chunks."""
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=4, stream=True, extra_body={"provider": prefs}
    )
    text, routing = "", None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        routing = (chunk.model_extra or {}).get("routing", routing)
    assert routing is not None
    return text, routing


async def stream_alpha_then_beta(
    sidecar: SidecarApp, max_tokens: int, messages: list[dict[str, str]]
) -> tuple[str, Any, Any]:
    """One streamed request with ``order: [alpha, beta]`` through the official client:
    the answer's text, the ``routing`` object of its last chunks (None if none had
    one) and the response headers."""
    raw = await openai_client(sidecar).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=messages,
        max_tokens=max_tokens,
        stream=True,
        extra_body={"provider": {"order": ["alpha", "beta"]}},
    )
    text, routing = "", None
    async for chunk in raw.parse():
        text += chunk.choices[0].delta.content or ""
        routing = (chunk.model_extra or {}).get("routing", routing)
    return text, routing, raw.headers


async def trickle_until_closed(
    writer: asyncio.StreamWriter, request: bytes, closed: asyncio.Future[bytes], within_s: float
) -> None:
    """Send ``request`` a byte at a time (a slow-loris) until the sidecar closes the
    connection (``closed``: what was read until then, nothing), which must happen, and
    within ``within_s``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    for byte in request:
        if closed.done():
            break
        writer.write(bytes([byte]))
        await asyncio.wait([closed], timeout=0.01)
    assert closed.done(), "the sidecar still held a request head after the whole trickle"
    try:
        rest = await closed
    except ConnectionResetError:
        # Closed while a trickled byte was still unread there: the kernel answers it
        # with a reset, which is the close as this side sees it.
        rest = b""
    assert rest == b""
    assert loop.time() - started < within_s


async def router_ttft(address: str, provider: str) -> float | None:
    """The TTFT the router now ranks ``provider`` of ``MODEL`` by (None: it has none)."""
    import grpc

    from router_common.pb import router_pb2, router_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        resp = await router_pb2_grpc.RouterStub(channel).RankProviders(
            router_pb2.RankProvidersRequest(
                model=MODEL, preferences=router_pb2.RoutingPreferences(only=[provider])
            )
        )
    ep = resp.endpoints[0]
    return ep.ttft_ms if ep.HasField("ttft_ms") else None


def sse_chunk(delta: Mapping[str, Any], finish: str | None = None, **fields: Any) -> bytes:
    """One ``chat.completion.chunk`` event as a provider writes it, for the raw upstreams
    that script a stream byte by byte; ``fields`` add or replace top-level fields (``id``,
    ``usage``) where a test's stream needs them."""
    obj = {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up-alpha",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **fields,
    }
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


@dataclass
class SidecarProcess:
    """A ``router-sidecar`` process and the stderr lines read from it so far, so a test can
    assert on the whole log (every line JSON, no secret) after the process is gone."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)

    async def read_until(self, needle: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first log record (parsed) whose line holds ``needle``; fails if the process
        exits first or nothing comes within ``timeout``."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stderr.readline()
                if not raw:
                    raise AssertionError("sidecar exited early:\n" + self.log)
                line = raw.decode()
                self.lines.append(line)
                if needle in line:
                    record: dict[str, Any] = json.loads(line)
                    return record

    async def exit_code(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit (a signal sent it on its way), keeping the rest of
        its stderr; the exit code."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            rest = await self.proc.stderr.read()
            code = await self.proc.wait()
        self.lines.extend(rest.decode().splitlines(keepends=True))
        return code

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def records(self) -> list[dict[str, Any]]:
        """Every log line parsed: a line that is not JSON fails the test here."""
        return [json.loads(line) for line in self.lines if line.strip()]


@contextlib.asynccontextmanager
async def sidecar_process(
    env: Mapping[str, str],
    *flags: str,
    soft_nofile: int | None = None,
    nofile: int | None = None,
) -> AsyncIterator[SidecarProcess]:
    """``python -m sidecar.cli`` on a free loopback port with the router unreachable (the
    fallback catalog in ``env`` serves), plus ``flags``; killed on the way out if still up.
    ``soft_nofile`` starts it with that soft file-descriptor limit (the hard one kept);
    ``nofile`` with that limit, soft and hard (so it cannot raise it)."""

    def lower_soft_limit() -> None:
        import resource

        if soft_nofile is not None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft_nofile, hard))
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar.cli",
        "--router",
        "127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
        *flags,
        env=dict(env),
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        preexec_fn=lower_soft_limit,
    )
    try:
        yield SidecarProcess(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@contextlib.contextmanager
def router_process(catalog: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """``router-service`` on free loopback ports; yields the process and its gRPC address."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "router_service.cli", "--config", catalog],
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "ROUTER_HOST": "127.0.0.1",
            "ROUTER_GRPC_PORT": "0",
            "ROUTER_HTTP_PORT": "0",
        },
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        address = ""
        for line in proc.stderr:
            record = json.loads(line)
            if record["message"] == "router started":
                address = record["grpc"]
                break
            assert time.monotonic() < deadline, "router did not start in time"
        assert address, f"router exited early with {proc.wait()}"
        # Keep reading its log so a full pipe never blocks it.
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait(timeout=10)
