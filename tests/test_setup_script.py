"""``scripts/setup``: what the README's demo command asks of a newcomer's machine.

``scripts/demo`` runs ``scripts/setup``; the demo needs neither chromium nor
redis-server, so setup must not reach for apt (root or sudo) unless asked. The
script runs here on a copy of itself in a scratch tree whose virtualenv is
already current, with ``apt-get`` and ``sudo`` replaced by stubs that record
their calls, so nothing is installed and the repository is not touched.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What the script needs from PATH besides the stubs (no chromium, no redis-server).
TOOLS = ("bash", "cat", "cut", "sha256sum", "rm", "touch", "id", "dirname", "env")


def _scratch_tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A tree with scripts/setup, a pyproject, a current .venv stamp; stubbed PATH."""
    tree = tmp_path / "repo"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "setup", tree / "scripts" / "setup")
    pyproject = b"[project]\nname = 'x'\n"
    (tree / "pyproject.toml").write_bytes(pyproject)
    venv_bin = tree / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    stamp = hashlib.sha256(pyproject).hexdigest()[:16]
    (tree / ".venv" / f".installed-{stamp}").touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "python3").symlink_to(sys.executable)
    calls = tmp_path / "calls.log"
    for stub in ("sudo", "apt-get"):
        (bin_dir / stub).write_text(f'#!/bin/sh\necho "{stub} $*" >> {calls}\n')
        (bin_dir / stub).chmod(0o755)
    return tree, bin_dir, calls


def _run(tree: Path, bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": str(bin_dir), "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(tree / "scripts" / "setup"), *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_setup_as_the_demo_runs_it_installs_no_system_package(tmp_path: Path) -> None:
    """It used to apt-get install redis-server on every run (sudo when not root), so
    `scripts/demo` failed on a machine without redis-server and without sudo."""
    tree, bin_dir, calls = _scratch_tree(tmp_path)
    proc = _run(tree, bin_dir)
    assert proc.returncode == 0, proc.stderr
    assert not calls.exists(), calls.read_text()


@pytest.mark.parametrize(
    ("flag", "package"), [("--browser", "chromium"), ("--redis", "redis-server")]
)
def test_setup_installs_what_the_tests_need_when_asked(
    tmp_path: Path, flag: str, package: str
) -> None:
    tree, bin_dir, calls = _scratch_tree(tmp_path)
    proc = _run(tree, bin_dir, flag)
    assert proc.returncode == 0, proc.stderr
    installs = [line for line in calls.read_text().splitlines() if " install " in line]
    assert len(installs) == 1 and installs[0].split()[-1] == package, installs


def test_setup_refuses_an_unknown_argument(tmp_path: Path) -> None:
    tree, bin_dir, calls = _scratch_tree(tmp_path)
    proc = _run(tree, bin_dir, "--brwoser")
    assert proc.returncode == 2
    assert "--brwoser" in proc.stderr and "--browser" in proc.stderr
    assert not calls.exists()


def test_the_test_command_asks_for_both() -> None:
    text = (ROOT / "scripts" / "test").read_text(encoding="utf-8")
    assert "scripts/setup --browser --redis" in text
