"""CPU per upstream request: aiohttp's ClientSession vs the sidecar's lean client (issue 13).

An ablation, not an end-to-end figure: the fake provider runs in its own
process (its own event loop), and this process streams chat completions from
it through each client in turn, the way the sidecar does (POST with the
sidecar's frozen header set, ``readany`` to the end, ``release``), measuring
this process's CPU (``time.process_time``, user + system) per request.
Clients alternate in rounds so drift hits both alike; the best round of each
is reported, sequential and concurrent.

    .venv/bin/python bench/bench_upstream_client.py [--requests 5000] [--concurrency 1 32] \
        [--rounds 5] [--ttft-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sidecar.lean_http import LeanClient
from sidecar.upstream import upstream_headers

BODY = orjson.dumps(
    {
        "model": "bench/model",
        "messages": [{"role": "user", "content": "benchmark prompt " * 8}],
        "max_tokens": 16,
        "stream": True,
    }
)


def _serve_fake(ttft_ms: float, q: Any) -> None:
    async def main() -> None:
        from fake_provider import FakeProvider, FakeProviderConfig

        fp = FakeProvider(
            FakeProviderConfig(name="fake", ttft_median_ms=ttft_ms, tokens_per_second=0, seed=1)
        )
        await fp.start()
        q.put(fp.base_url)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


Fetch = Callable[[], Awaitable[int]]


def _fetch(post: Callable[[], Awaitable[Any]]) -> Fetch:
    """One request as the sidecar makes it: ``post()``, ``readany`` to the end, ``release``;
    the number of bytes read. Both clients run this same loop, so they differ only in
    ``post`` and the response it returns; ``post`` is a plain call (a lambda, no extra
    coroutine), the same small cost for both."""

    async def fetch() -> int:
        resp = await post()
        n = 0
        while True:
            data = await resp.content.readany()
            if not data:
                break
            n += len(data)
        resp.release()
        return n

    return fetch


def aiohttp_fetch(session: aiohttp.ClientSession, url: URL) -> Fetch:
    """As sidecar/proxy.py's _open_stream and streaming.py's relay use aiohttp."""
    headers = upstream_headers("sk-bench", True)
    timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_connect=10.0)
    return _fetch(
        lambda: session.post(
            url, data=BODY, headers=headers, timeout=timeout, allow_redirects=False
        )
    )


def lean_fetch(client: LeanClient, url: URL) -> Fetch:
    headers = upstream_headers("sk-bench", True)
    return _fetch(lambda: client.post(url, BODY, headers, 10.0))


async def run(fetch: Fetch, n: int, conc: int) -> float:
    """CPU seconds of this process for ``n`` requests, ``conc`` at a time."""
    sem = asyncio.Semaphore(conc)

    async def one() -> None:
        async with sem:
            await fetch()

    c0 = time.process_time()
    if conc == 1:
        for _ in range(n):
            await fetch()
    else:
        await asyncio.gather(*(one() for _ in range(n)))
    return time.process_time() - c0


async def main(args: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_serve_fake, args=(args.ttft_ms, q), daemon=True)
    proc.start()
    try:
        base = q.get(timeout=30)
        url = URL(base + "/chat/completions")
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60),
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        lean = LeanClient()
        clients = {"aiohttp": aiohttp_fetch(session, url), "lean": lean_fetch(lean, url)}
        for fetch in clients.values():  # warm-up, and both answer the same
            sizes = {await fetch() for _ in range(20)}
            assert min(sizes) > 0, sizes
        for conc in args.concurrency:
            best: dict[str, float] = {}
            for _ in range(args.rounds):
                for name, fetch in clients.items():
                    cpu = await run(fetch, args.requests, conc) / args.requests
                    best[name] = min(best.get(name, cpu), cpu)
            a, b = best["aiohttp"] * 1e6, best["lean"] * 1e6
            print(
                f"concurrency {conc}: aiohttp {a:.1f} µs, lean {b:.1f} µs per request "
                f"(client process CPU, best of {args.rounds} × {args.requests}); "
                f"difference {a - b:.1f} µs",
                flush=True,
            )
        await session.close()
        await lean.close()
    finally:
        proc.terminate()
        proc.join(5)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--ttft-ms", type=float, default=0.0)
    asyncio.run(main(p.parse_args()))
