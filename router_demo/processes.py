"""Start, watch and stop the demo's child processes without ever leaving orphans.

Three layers make sure every child dies with the demo:

1. Children run in their own session (process group), so a terminal Ctrl-C
   reaches only the demo, which then stops them in a sensible order (sidecar
   before router, so outcomes are not sent to a router that is going away).
2. :meth:`Supervisor.stop_all` sends SIGTERM to each child's process group,
   waits a grace period, then SIGKILLs whatever is left. It runs from the
   demo's ``finally`` and from ``atexit``, so exceptions and Ctrl-C are covered.
3. Each child is started through :mod:`router_demo.child`, which asks the
   kernel for SIGTERM when the demo dies, which covers even SIGKILL of the demo.

Children are started as ``sys.executable -m …`` so the demo works when the
virtualenv's ``bin`` is not on ``PATH``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp


class StartupError(RuntimeError):
    """A child did not become ready; the message includes the tail of its log."""


@dataclass(slots=True)
class Child:
    """One started process and where its stderr goes."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held together so they differ).

    There is a small window between closing these sockets and the child binding
    them; on a CI box that is far less likely to bite than a fixed port range.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could not bind ``host:port`` now (as the children will, with
    SO_REUSEADDR, so a port in TIME_WAIT is not reported as taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class Supervisor:
    """Owns every child the demo starts."""

    def __init__(self, log_dir: Path, grace_s: float = 5.0) -> None:
        self.log_dir = log_dir
        self.grace_s = grace_s
        self.children: list[Child] = []
        atexit.register(self.stop_all)

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children]

    def start(
        self, name: str, module: str, args: Sequence[str], env: Mapping[str, str] | None = None
    ) -> Child:
        """Run ``python -m module args`` via the orphan-proof launcher, stderr to a log file."""
        log_path = self.log_dir / f"{name}.log"
        cmd = [sys.executable, "-m", "router_demo.child", str(os.getpid()), module, *args]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    async def wait_ready(
        self,
        child: Child,
        probe: Callable[[], Awaitable[bool]],
        timeout_s: float = 20.0,
    ) -> None:
        """Poll ``probe`` until it returns True; fail fast if the child exits."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not child.alive():
                raise StartupError(
                    f"{child.name} exited with status {child.proc.returncode} while starting; "
                    f"its log ({child.log_path}) ends with:\n{child.log_tail()}"
                )
            with contextlib.suppress(Exception):
                if await probe():
                    return
            if time.monotonic() > deadline:
                raise StartupError(
                    f"{child.name} not ready after {timeout_s:.0f}s; "
                    f"its log ({child.log_path}) ends with:\n{child.log_tail()}"
                )
            await asyncio.sleep(0.1)

    def stop(self, children: Sequence[Child]) -> None:
        """SIGTERM the children's process groups, wait up to the grace, then SIGKILL."""
        for child in children:
            if child.alive():
                _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for child in children:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                child.proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=2.0)
            # Anything the child itself spawned into its group goes too.
            _signal_group(child, signal.SIGKILL)

    def stop_all(self) -> None:
        """Stop everything, newest first (sidecar, then router, then providers). Idempotent."""
        self.stop(list(reversed(self.children)))


def _signal_group(child: Child, sig: signal.Signals) -> None:
    """Signal the child's whole process group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)


def http_probe(session: aiohttp.ClientSession, url: str) -> Callable[[], Awaitable[bool]]:
    """A readiness probe: ``GET url`` answers 200."""

    async def probe() -> bool:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=1.0)) as resp:
            return resp.status == 200

    return probe
