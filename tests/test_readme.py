"""Every README code block meant to run, runs (issue 12, item 2).

The ``sh`` and ``python`` blocks run in README order in one bash session from
the repository root, as a reader pasting them into one shell would: the "Run it
by hand" block starts fake providers, the router and a sidecar in the
background, later blocks talk to them. Only the fixed ports are swapped for
free ones (and the local catalog for a copy with those ports), so the test
cannot collide with anything else on the machine. ``yaml`` blocks are loaded
with the catalog or tuning parser. Blocks fenced ``sh {norun}`` (the quickstart,
which is this test suite and the demo) or ``text`` (usage synopses) are skipped;
any other fence is an error, so a new block cannot silently escape the test.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from router_common.catalog import parse_catalog
from router_demo.processes import free_ports
from router_service.auth import parse_tokens_file
from router_service.tuning import parse_tuning
from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
LOCAL_CATALOG = "router_common/examples/local-catalog.yaml"
#: The fixed ports the README and the local catalog use.
FIXED_PORTS = ("9101", "9102", "9103", "50051", "8081", "8080")
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
RUNNABLE = {"sh", "python"}
ALLOWED_FENCES = {"sh", "python", "yaml", "text", "", "sh {norun}"}


@dataclass(frozen=True, slots=True)
class Block:
    fence: str  # the info string: "sh", "sh {norun}", "python", ...
    text: str

    @property
    def runs(self) -> bool:
        return self.fence in RUNNABLE


def readme_blocks() -> list[Block]:
    return [Block(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(README.read_text())]


def test_every_block_is_runnable_or_marked() -> None:
    blocks = readme_blocks()
    assert {b.fence for b in blocks} <= ALLOWED_FENCES
    assert sum(b.runs for b in blocks) >= 3
    assert any(b.fence == "python" for b in blocks)


def test_yaml_blocks_load(tmp_path: Path) -> None:
    yaml_blocks = [b.text for b in readme_blocks() if b.fence == "yaml"]
    assert len(yaml_blocks) >= 3
    for i, text in enumerate(yaml_blocks):
        if text.lstrip().startswith("providers:"):
            parse_catalog(text, "README catalog block")
        elif text.lstrip().startswith("callers:"):
            # A tokens file: its relative token_file entries sit next to it.
            folder = tmp_path / f"block{i}"
            folder.mkdir()
            for spec in yaml.safe_load(text)["callers"].values():
                if "token_file" in spec:
                    (folder / spec["token_file"]).write_text("a-token-from-a-file\n")
            (folder / "tokens.yaml").write_text(text)
            callers, _ = parse_tokens_file(folder / "tokens.yaml")
            assert callers
        else:
            parse_tuning(text, "README tuning block")


def _script(blocks: list[Block], ports: dict[str, str], catalog: Path) -> str:
    """One bash script: every runnable block in order, each behind a marker line."""
    swap = re.compile(r"\b(" + "|".join(FIXED_PORTS) + r")\b")
    parts = ["set -euo pipefail"]
    for i, block in enumerate(b for b in blocks if b.runs):
        text = swap.sub(lambda m: ports[m.group(1)], block.text)
        text = text.replace(LOCAL_CATALOG, str(catalog))
        parts.append(f"echo '@@block {i} ({block.fence})@@'")
        if block.fence == "python":
            parts.append(f"{sys.executable} - <<'README_PY'\n{text}README_PY")
        else:
            parts.append(text)
    parts.append("echo '@@end@@'")
    return "\n".join(parts) + "\n"


def _stop_group(pgid: int) -> None:
    """SIGTERM the session's process group (background jobs included), SIGKILL stragglers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@pytest.mark.timeout(150)
def test_readme_blocks_run_against_a_started_stack(tmp_path: Path) -> None:
    ports = dict(zip(FIXED_PORTS, map(str, free_ports(len(FIXED_PORTS))), strict=True))
    catalog = tmp_path / "local-catalog.yaml"
    text = (REPO_ROOT / LOCAL_CATALOG).read_text()
    for fixed, free in ports.items():
        text = re.sub(rf"\b{fixed}\b", free, text)
    catalog.write_text(text)
    blocks = readme_blocks()
    script = tmp_path / "readme.sh"
    script.write_text(_script(blocks, ports, catalog))
    out_path = tmp_path / "out.txt"
    # Output to a file, not a pipe: the background processes keep a pipe open.
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(script)],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=120)
        finally:
            _stop_group(proc.pid)
    output = out_path.read_text(errors="replace")
    assert rc == 0, output[-4000:]
    assert "@@end@@" in output
    sections = re.split(r"^@@block \d+ \((?:sh|python)\)@@$", output, flags=re.M)
    answers = [s for s in sections if '"choices"' in s]
    assert answers, output[-4000:]  # the curl request got a completion
    assert '"routing"' in answers[0]
    assert '"provider":"cerebras"' in output.replace(" ", "")  # the endpoints document
    assert re.search(r"\[served by (cerebras|groq|deepinfra) after \d attempt", output), output
