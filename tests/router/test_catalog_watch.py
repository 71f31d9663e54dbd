"""The catalog watcher reacts to the catalog file and the ConfigMap link only (issue 12, item 3)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from watchfiles import Change

from router_service.catalog_watch import catalog_change_filter, watch_catalog
from tests.conftest import wait_for


def test_filter_keeps_only_the_catalog_and_the_configmap_link(tmp_path: Path) -> None:
    keep = catalog_change_filter(tmp_path / "catalog.yaml")
    assert keep(Change.modified, str(tmp_path / "catalog.yaml"))
    assert keep(Change.added, str(tmp_path / "..data"))
    assert not keep(Change.modified, str(tmp_path / "router.log"))
    assert not keep(Change.added, str(tmp_path / "..data_tmp"))
    assert not keep(Change.added, str(tmp_path / ".catalog.yaml.swp"))
    assert not keep(Change.modified, str(tmp_path / "catalog.yaml.bak"))


async def test_a_log_file_next_to_the_catalog_triggers_nothing(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("v: 1\n")
    log_file = tmp_path / "router.log"
    calls: list[set[tuple[Change, str]]] = []
    # A long poll: every call in this test comes from a file change.
    task = asyncio.create_task(watch_catalog(catalog, calls.append, poll_s=300.0))
    try:
        # The watch is live once a catalog change is seen (the watcher starts in a
        # thread, so an early write may go unseen: write until one is).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        n = 0
        while not calls:
            assert loop.time() < deadline, "the watcher never saw the catalog change"
            n += 1
            catalog.write_text(f"v: {n}\n")
            with contextlib.suppress(AssertionError):
                await wait_for(lambda: bool(calls), timeout=0.5)
        await asyncio.sleep(0.5)  # let the debounce window of the start-up writes close
        seen = len(calls)
        # Log lines in several debounce windows: each would be its own batch.
        for i in range(5):
            with log_file.open("a") as fh:
                fh.write(f"line {i}\n")
            await asyncio.sleep(0.25)  # spread writes over separate debounce windows
        catalog.write_text("v: final\n")
        await wait_for(lambda: len(calls) > seen, timeout=10)
        # Changes arrive in order, so any batch for the log file came before this one;
        # every batch delivered names the catalog and nothing else.
        assert [{Path(p).name for _c, p in batch} for batch in calls] == [{"catalog.yaml"}] * len(
            calls
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
