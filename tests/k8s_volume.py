"""What the kubelet does to a mounted Secret or ConfigMap when it changes.

A new ``..<version>`` directory is written, then ``..data`` is replaced by an
atomic rename; the files the process was given (``tls.crt``, ``catalog.yaml``)
are symlinks through ``..data`` and never change themselves, so a watcher that
follows only their own mtime or inode misses every update.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def kubelet_swap(directory: Path, version: str, files: dict[str, bytes]) -> None:
    """Publish ``files`` in ``directory`` as version ``version``, the kubelet's way
    (the previous version's directory is deleted once ``..data`` has moved on)."""
    current = directory / "..data"
    old = os.readlink(current) if current.is_symlink() else None
    target = directory / f"..{version}"
    target.mkdir()
    for name, content in files.items():
        (target / name).write_bytes(content)
    tmp = directory / "..data_tmp"
    tmp.symlink_to(target.name)
    tmp.replace(current)
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(Path("..data") / name)
    if old:
        shutil.rmtree(directory / old)
