"""Catalog reload when mounted the way Kubernetes mounts a ConfigMap (atomic symlink swaps)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from router_service.app import RouterApp, Settings
from tests.conftest import EXAMPLE_CATALOG, wait_for


def _publish(volume: Path, generation: int, text: str) -> None:
    """Do what the kubelet does: write a new timestamped dir, swap ..data, delete the old dir."""
    new_dir = volume / f"..2026_11_23_{generation}"
    new_dir.mkdir()
    (new_dir / "catalog.yaml").write_text(text)
    old = os.readlink(volume / "..data") if (volume / "..data").is_symlink() else None
    tmp_link = volume / "..data_tmp"
    tmp_link.symlink_to(new_dir.name)
    tmp_link.rename(volume / "..data")
    if not (volume / "catalog.yaml").exists():
        (volume / "catalog.yaml").symlink_to("..data/catalog.yaml")
    if old:
        shutil.rmtree(volume / old)


async def test_reloads_on_every_configmap_update(tmp_path: Path) -> None:
    volume = tmp_path / "etc-router"
    volume.mkdir()
    original = EXAMPLE_CATALOG.read_text()
    _publish(volume, 0, original)
    app = RouterApp(
        Settings(
            config_path=str(volume / "catalog.yaml"),
            grpc_host="127.0.0.1",
            grpc_port=0,
            http_host="127.0.0.1",
            http_port=0,
            drain_seconds=0.5,
        )
    )
    await app.start()
    try:
        core = app.core
        assert core is not None
        for generation, price in ((1, "9.99"), (2, "8.88"), (3, "7.77")):
            version = core.catalog_version
            _publish(volume, generation, original.replace("2.25", price, 1))
            await wait_for(lambda v=version: core.catalog_version != v, timeout=15)
            cerebras = core.catalog.models["zai/glm-4.7"].endpoints[0]
            assert cerebras.input_price_per_mtok == float(price)
    finally:
        await app.stop()
