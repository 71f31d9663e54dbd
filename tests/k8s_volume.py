"""What the kubelet does to a mounted Secret or ConfigMap when it changes.

A new ``..<version>`` directory is written, then ``..data`` is replaced by an
atomic rename; the files the process was given (``tls.crt``, ``catalog.yaml``)
are symlinks through ``..data`` and never change themselves, so a watcher that
follows only their own mtime or inode misses every update.
"""

from __future__ import annotations

from pathlib import Path


def kubelet_swap(directory: Path, version: str, files: dict[str, bytes]) -> None:
    """Publish ``files`` in ``directory`` as version ``version``, the kubelet's way."""
    target = directory / f"..{version}"
    target.mkdir()
    for name, data in files.items():
        (target / name).write_bytes(data)
    tmp = directory / "..data_tmp"
    tmp.symlink_to(target.name)
    tmp.replace(directory / "..data")
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(Path("..data") / name)
