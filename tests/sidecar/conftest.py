"""Fixtures for the sidecar suite (helpers live in sidecar_helpers, importable by tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sidecar_helpers import Stack


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """Fake providers, an optional router and a sidecar, all torn down after the test."""
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        await s.close()
