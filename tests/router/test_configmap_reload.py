"""Catalog reload when mounted the way Kubernetes mounts a ConfigMap (atomic symlink swaps)."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from router_common.catalog import version_of_bytes
from router_common.domain import EndpointKey
from router_service.app import RouterApp, Settings
from tests.conftest import EXAMPLE_CATALOG, wait_for
from tests.k8s_volume import kubelet_swap
from tests.router.pb_builders import MODEL, outcome


def _publish(volume: Path, generation: int, text: str) -> None:
    kubelet_swap(volume, f"2026_11_23_{generation}", {"catalog.yaml": text.encode()})


async def test_reloads_on_every_configmap_update(tmp_path: Path) -> None:
    volume = tmp_path / "etc-router"
    volume.mkdir()
    original = EXAMPLE_CATALOG.read_text()
    _publish(volume, 0, original)
    app = _router_on(volume, watch=True)
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


def _router_on(volume: Path, watch: bool = False) -> RouterApp:
    """A router on the volume's catalog; without ``watch`` it reloads only when told
    (as SIGHUP or a poll does)."""
    return RouterApp(
        Settings(
            config_path=str(volume / "catalog.yaml"),
            grpc_host="127.0.0.1",
            grpc_port=0,
            http_host="127.0.0.1",
            http_port=0,
            drain_seconds=0.5,
            watch_catalog=watch,
        )
    )


def _until_no_reader(fifo: Path, timeout: float = 10.0) -> None:
    """Wait until nobody holds ``fifo`` open for reading (a non-blocking open for writing
    then fails with ENXIO)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return
            raise
    raise TimeoutError(f"{fifo} still open for reading after {timeout} s")


async def _refused_gauge(app: RouterApp) -> float:
    """``router_catalog_reload_refused`` from the router's /metrics."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{app.http_url}/metrics") as response,
    ):
        text = await response.text()
    (line,) = (ln for ln in text.splitlines() if ln.startswith("router_catalog_reload_refused "))
    return float(line.split()[1])


def _refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("catalog reload refused")]


async def test_a_missing_or_broken_catalog_is_logged_once_not_at_every_poll(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The watcher polls every few seconds; a key removed from the ConfigMap (the file
    gone) used to write the same ERROR at every poll, forever, with a bare errno."""
    volume = tmp_path / "etc-router"
    volume.mkdir()
    original = EXAMPLE_CATALOG.read_text()
    _publish(volume, 0, original)
    app = _router_on(volume)
    await app.start()
    try:
        core = app.core
        assert core is not None
        version = core.catalog_version
        caplog.set_level(logging.ERROR, logger="router_service.app")
        (volume / "catalog.yaml").unlink()
        assert [app.reload_catalog() for _ in range(3)] == [False, False, False]
        (missing,) = _refusals(caplog)
        assert missing.file == str(volume / "catalog.yaml")  # type: ignore[attr-defined]
        assert "(file): cannot read: No such file or directory" in missing.error  # type: ignore[attr-defined]
        assert await _refused_gauge(app) == 1  # the edit is not in effect: alertable
        (volume / "catalog.yaml").symlink_to("..data/catalog.yaml")
        assert app.reload_catalog() and core.catalog_version == version
        assert await _refused_gauge(app) == 0

        caplog.clear()
        _publish(volume, 1, "providers: [\n")
        assert [app.reload_catalog() for _ in range(3)] == [False, False, False]
        (broken,) = _refusals(caplog)
        assert "not valid YAML" in broken.error  # type: ignore[attr-defined]
        assert core.catalog_version == version
        assert await _refused_gauge(app) == 1

        caplog.clear()  # fixed, then broken the same way again: that is news, logged again
        _publish(volume, 2, original)
        assert app.reload_catalog()
        assert await _refused_gauge(app) == 0
        _publish(volume, 3, "providers: [\n")
        assert not app.reload_catalog()
        assert len(_refusals(caplog)) == 1
    finally:
        await app.stop()


async def test_the_version_names_the_catalog_that_was_parsed(tmp_path: Path) -> None:
    """The version used to be hashed from one read and the catalog parsed from a second:
    a swap between the two made RankProviders name a catalog other than the one ranking.
    A FIFO stands in for the swap: each open of it reads the next content."""
    volume = tmp_path / "etc-router"
    volume.mkdir()
    original = EXAMPLE_CATALOG.read_text()
    _publish(volume, 0, original)
    app = _router_on(volume)
    await app.start()
    fifo = volume / "catalog.yaml"
    fifo.unlink()
    os.mkfifo(fifo)
    first, second = (original.replace("2.25", price, 1) for price in ("9.99", "8.88"))

    def kubelet() -> None:
        with open(fifo, "w") as f:  # waits for the router to open the file
            f.write(first)
        _until_no_reader(fifo)  # one content per read, never two in one pipe
        with open(fifo, "w") as f:  # a second read, if the router makes one
            f.write(second)

    writer = threading.Thread(target=kubelet, daemon=True)
    writer.start()
    try:
        core = app.core
        assert core is not None
        assert app.reload_catalog()
        cerebras = core.catalog.models["zai/glm-4.7"].endpoints[0]
        assert cerebras.input_price_per_mtok == 9.99
        assert core.catalog_version == version_of_bytes(first.encode())
    finally:
        if writer.is_alive():  # the router read once: the writer waits for a second read
            with open(fifo, "rb") as drain:
                drain.read()
        writer.join(timeout=10)
        assert not writer.is_alive()
        await app.stop()


async def test_a_reload_names_the_endpoints_it_removed_and_added(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A removed endpoint's sketches, health and history are dropped at once, and
    re-adding it starts it from nothing: the "catalog loaded" line used to give only
    counts, so an operator reverting an edit could not see what the edit cost."""
    volume = tmp_path / "etc-router"
    volume.mkdir()
    original = EXAMPLE_CATALOG.read_text()
    glm_on_deepinfra = "      - {provider: deepinfra, upstream_model: zai-org/GLM-4.7,"
    without = "\n".join(
        line for line in original.splitlines() if not line.startswith(glm_on_deepinfra)
    )
    assert without != original.rstrip("\n")
    _publish(volume, 0, original)
    app = _router_on(volume)
    await app.start()
    try:
        core = app.core
        assert core is not None
        key = EndpointKey(MODEL, "deepinfra")
        assert core.record([outcome("deepinfra")] * 5).accepted == 5
        assert key in core.store.keys()
        caplog.set_level(logging.INFO, logger="router_service.core")
        _publish(volume, 1, without)
        assert app.reload_catalog()
        assert key not in core.store.keys()
        _publish(volume, 2, original)
        assert app.reload_catalog()
        assert key not in core.store.keys()  # back in the catalog, from nothing
    finally:
        await app.stop()
    removal, revert = [r for r in caplog.records if r.getMessage() == "catalog loaded"]
    assert (removal.removed, removal.added) == (["deepinfra | zai/glm-4.7"], [])  # type: ignore[attr-defined]
    assert (revert.removed, revert.added) == ([], ["deepinfra | zai/glm-4.7"])  # type: ignore[attr-defined]
    assert (removal.endpoints_removed, revert.endpoints_added) == (1, 1)  # type: ignore[attr-defined]
