"""LiteLLM's Router as a benchmark contender; run ONLY by bench/bench_routing.py, in its own venv.

It imports nothing of the project: bench_routing.py installs litellm==1.106.2
into ``bench/.litellm-venv`` and runs this file with that interpreter, passing
a JSON job on stdin (deployments, schedule, router settings); results go to
stdout as JSON, one record per request: (index, ttft_s or null, error or null).

Router settings are what a careful user would set: retries on, a stream
timeout, allowed_fails and a cooldown, so a failing or hung deployment is
cooled down rather than retried forever.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any


async def main() -> None:
    job = json.loads(sys.stdin.read())
    import litellm  # type: ignore[import-not-found]  # only in bench/.litellm-venv
    from litellm import Router

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    routers = [
        Router(
            model_list=[
                {
                    "model_name": "bench",
                    "litellm_params": {
                        "model": "openai/" + d["upstream_model"],
                        "api_base": d["base_url"],
                        "api_key": "sk-bench",
                    },
                    "model_info": {"id": d["name"]},
                }
                for d in job["deployments"]
            ],
            routing_strategy=job["strategy"],
            num_retries=job["num_retries"],
            timeout=job["timeout_s"],
            stream_timeout=job["stream_timeout_s"],
            allowed_fails=job["allowed_fails"],
            cooldown_time=job["cooldown_s"],
            retry_after=0,
        )
        for _ in range(job.get("routers", 1))
    ]
    results: list[Any] = [None] * len(job["schedule"])
    sem = asyncio.Semaphore(job["concurrency"])
    t0 = time.perf_counter() + 0.5

    async def one(i: int, at: float, lane: int) -> None:
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        async with sem:
            start = time.perf_counter()
            ttft = None
            err = None
            try:
                stream = await routers[lane].acompletion(
                    model="bench",
                    messages=[{"role": "user", "content": "hello"}],
                    max_tokens=4,
                    stream=True,
                )
                async for chunk in stream:
                    if ttft is None and chunk.choices and chunk.choices[0].delta.content:
                        ttft = time.perf_counter() - start
            except Exception as exc:  # the app sees an error
                err = type(exc).__name__
            if ttft is None and err is None:
                err = "no_content"
            results[i] = [i, ttft, err, start - t0]

    await asyncio.gather(
        *(one(i, at, lane % len(routers)) for i, (at, lane) in enumerate(job["schedule"]))
    )
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
