"""Watches the catalog file, and only it, for changes.

Why a directory watch with a filter: inotify cannot follow a single file
through a Kubernetes ConfigMap update. The kubelet writes a new timestamped
directory, swaps the ``..data`` symlink next to the file, and deletes the old
directory the file resolved into, so a watch on the file (or on its resolved
path) would see the first update and none after. Watching the directory as
named sees the swap; the filter then keeps only changes to the catalog's own
name and to ``..data``, so a log file, an editor's swap file or anything else
written next to the catalog never triggers a reload (a log file beside the
catalog used to trigger one reload per log line, forever).

A timeout poll (``poll_s``) covers filesystems without inotify (NFS, some
overlay setups) and a file that was replaced before the watch began.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from watchfiles import Change, awatch

log = logging.getLogger(__name__)

#: The symlink a ConfigMap volume swaps atomically on every update.
CONFIGMAP_DATA_LINK = "..data"

#: Debounce window of the watcher, ms: an editor's write+rename is one reload.
DEBOUNCE_MS = 200


def catalog_change_filter(catalog_path: str | Path) -> Callable[[Change, str], bool]:
    """A ``watchfiles`` filter that keeps changes to the catalog file or the ConfigMap link."""
    names = {Path(catalog_path).name, CONFIGMAP_DATA_LINK}

    def is_catalog_change(_change: Change, path: str) -> bool:
        return Path(path).name in names

    return is_catalog_change


async def watch_catalog(
    catalog_path: str | Path,
    on_change: Callable[[set[tuple[Change, str]]], object],
    *,
    poll_s: float,
) -> None:
    """Call ``on_change(changes)`` after each change to the catalog, and every ``poll_s``
    seconds without one (``changes`` is then empty). Runs until cancelled."""
    path = Path(catalog_path).absolute()  # not resolved: see the module docstring
    async for changes in awatch(
        path.parent,
        watch_filter=catalog_change_filter(path),
        debounce=DEBOUNCE_MS,
        recursive=False,
        yield_on_timeout=True,
        rust_timeout=max(1, int(poll_s * 1000)),
    ):
        on_change(changes)
