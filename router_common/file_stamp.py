"""A file's (mtime, inode, size), following symlinks: how both processes notice a changed file.

Why all three: Kubernetes updates a mounted Secret or ConfigMap by swapping the
``..data`` symlink, which changes the inode the path resolves to while the new
file may carry an older mtime; an in-place rewrite changes the mtime or the size.
Used for every file re-read on change: the router's tokens file and TLS files,
the sidecar's token file and router TLS files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

Stamp = tuple[int, int, int]


def file_stamp(path: str | os.PathLike[str]) -> Stamp | None:
    """The file's stamp; None while it cannot be stat'ed (missing, mid-swap)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino, st.st_size)


def files_stamp(paths: Iterable[str | os.PathLike[str]]) -> tuple[Stamp, ...] | None:
    """Every file's stamp, in order; None while any one is missing (a swap half done:
    keep what is loaded and look again later)."""
    stamps = []
    for path in paths:
        stamp = file_stamp(path)
        if stamp is None:
            return None
        stamps.append(stamp)
    return tuple(stamps)
