"""The sketch worker: the stats store and the dashboard history in a child process.

Why a process. The router serves RankProviders and ingests outcomes on one
asyncio loop; under four full-speed StreamOutcomes writers the loop is the
bottleneck, and ranking gets what ingestion leaves (``IngestPacing.share``).
With the 32 callers of the benchmark in a closed loop, ranking's latency
under ingestion is its latency alone over ``1 - share``, so the only lever
on both targets at once (p99 ≤ 2×, ≥ 30k outcomes/s) is the loop time an
outcome costs: ``rate = share / cost``. In process an outcome cost 7.5-11.5 µs
of loop plus its refresh; ~40% of that was the stats store (queueing groups,
the recent view, adding to digests at refresh, merging windows) and the
dashboard series (histogram bins). Those need no answer on the request path:
ranking reads only the stats they *publish*. So they moved here, behind the
two seams the core already used (``StatsStore``, and ``SeriesSink`` for the
series). Threads would not do: the work is Python bytecode, and the GIL
would give the loop nothing back.

What stays in the router: validation (the ack reports rejections), health
(ranking must see an ejection at once), the ledger, and a mirror of the
cached ``EndpointStats`` the worker sends after each refresh. What crosses:
per slice, each endpoint's outcomes as six columns (``frames.py``), ~0.3 µs
an outcome to build and pickle; back, the stats of endpoints that changed,
and answers to the few requests that need one (dashboard points, a
checkpoint, "settled").

Consistency. One socket, one writer, one reader, in order: whatever the
router sent before a request is applied before the worker answers it, which
makes ``settled`` read-your-writes and a replica's checkpoint consistent with
its stream position. Between refreshes the mirror lags as the in-process
cache did (at most ``refresh_min_interval_s`` under traffic), plus a hop.

Trade-off. A second interpreter (~40 MB) and its CPU (4-8 µs an outcome, 28-36%
of a core at 30-40k/s) for ~40% less loop time per outcome. On a 2-core machine
it competes with the router's own threads, hence its niceness. If it dies,
the router falls back in process (``proxy.py``).

``frames.py``: what crosses and how; ``worker.py``: the child process;
``proxy.py``: the router's end (``SketchWorker``, ``WorkerStore``,
``WorkerSeries``).
"""
