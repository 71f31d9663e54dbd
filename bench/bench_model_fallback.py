"""What a request's planning and bookkeeping cost the sidecar, one model against a chain.

In process, no sockets: the sidecar's ``Proxy`` with rankings in its cache (the
common case), timing per request (a) the planning that runs before the first
attempt (``request_plan``: cached rankings, filters, keys, the attempt
allotment), on the app's time-to-first-token path, and (b) everything the
sidecar adds around one successful non-streaming answer (planning, costing
the usage, the ``routing`` object with ``fallbacks_available`` and
``cost_usd``). Baseline: a request naming one model, measured in the same run;
the others name fallback models (all ranked from the cache). Best of N
interleaved rounds, since the machine is shared.

    .venv/bin/python bench/bench_model_fallback.py [--rounds 7] [--n 20000]

Results in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sidecar.config import SidecarSettings
from sidecar.keys import ProviderKeys
from sidecar.metrics import SidecarMetrics
from sidecar.preferences import ParsedRequest, parse_request
from sidecar.proxy import Proxy
from sidecar.ranking_client import Ranking, RankingClient, Route
from sidecar.redaction import KeyRedactor
from sidecar.transport import UpstreamTransport, make_transport
from sidecar.upstream import AttemptRecord

MODELS = [f"bench/model-{i}" for i in range(8)]


def _request(models: int) -> ParsedRequest:
    body: dict[str, Any] = {
        "model": MODELS[0],
        "messages": [{"role": "user", "content": "benchmark prompt " * 8}],
        "max_tokens": 16,
    }
    if models > 1:
        body["models"] = MODELS[1:models]
    return parse_request(body)


def _proxy(transport: UpstreamTransport) -> tuple[Proxy, RankingClient]:
    settings = SidecarSettings(router="", rank_cache_ttl_s=1e9)
    redactor = KeyRedactor()
    ranking = RankingClient(settings, None, None)
    for model in MODELS:
        routes = tuple(
            Route(f"p{i}", "http://127.0.0.1:1/v1", "", True, f"{model}-{i}", 1.0, 2.0)
            for i in range(3)
        )
        meta = {"strategy": "sort", "execution_order": [r.provider for r in routes]}
        req = parse_request({"model": model, "messages": [{"role": "user", "content": "x"}]})
        ranking._put(req.cache_key, Ranking(routes, "cache", meta, fetched_at=time.monotonic()))
    keys = ProviderKeys({}, redactor, lambda n: None)
    proxy = Proxy(settings, transport, ranking, SidecarMetrics(), lambda o: None, keys, redactor)
    return proxy, ranking


async def _plan(proxy: Proxy, req: ParsedRequest) -> None:
    await proxy.request_plan(req)


async def _answer(proxy: Proxy, req: ParsedRequest) -> None:
    plan = await proxy.request_plan(req)
    leg, route = plan.attempts[0]
    rec = AttemptRecord(route.provider, route.upstream_model, 0.0)
    rec.model = leg.req.model
    rec.finish_ok(16, None)
    answer = {"usage": {"prompt_tokens": 30, "completion_tokens": 16}}
    proxy._cost_answer(leg, route, rec, answer)
    proxy.routing_object(plan, [rec], leg, route.provider, route.upstream_model)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--n", type=int, default=20000, help="requests per measurement")
    args = ap.parse_args()
    rows = [(1, "one model (baseline)"), (3, "model + 2 fallback models"), (8, "8 models")]
    transport = make_transport("lean")  # never used: no request goes upstream here
    try:
        proxy, _ = _proxy(transport)
        best: dict[tuple[str, int], float] = {}
        for _ in range(args.rounds):
            for what, fn in (("plan", _plan), ("answer", _answer)):
                for models, _label in rows:
                    req = _request(models)
                    t = time.perf_counter()
                    for _ in range(args.n):
                        await fn(proxy, req)
                    us = (time.perf_counter() - t) / args.n * 1e6
                    key = (what, models)
                    best[key] = min(best.get(key, us), us)
    finally:
        await transport.close()
    print(f"python {sys.version.split()[0]}; best of {args.rounds} rounds of {args.n} requests")
    print()
    print("| request | planning µs | ratio | planning + bookkeeping µs | ratio |")
    print("|---|---:|---:|---:|---:|")
    for models, label in rows:
        p, a = best[("plan", models)], best[("answer", models)]
        p0, a0 = best[("plan", 1)], best[("answer", 1)]
        print(f"| {label} | {p:.2f} | {p / p0:.2f}× | {a:.2f} | {a / a0:.2f}× |")


if __name__ == "__main__":
    asyncio.run(main())
