"""Launcher for the demo's child processes: ``python -m router_demo.child PARENT_PID MODULE ARGS…``.

Why a launcher: the demo must never leave orphans, even when it is killed with
SIGKILL (no ``finally`` runs then). On Linux the child asks the kernel to send
it SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), then runs ``MODULE`` as
``__main__`` exactly like ``python -m MODULE ARGS…`` would. Doing it here,
after exec, avoids ``preexec_fn`` (unsafe once the parent has threads, and
gRPC starts threads). Elsewhere it simply runs the module.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import runpy
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Ask for SIGTERM when the parent dies; exit now if it already did (a race at start)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        sys.exit(0)


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: python -m router_demo.child PARENT_PID MODULE [ARGS...]")
    parent_pid, module = int(sys.argv[1]), sys.argv[2]
    _die_with_parent(parent_pid)
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
