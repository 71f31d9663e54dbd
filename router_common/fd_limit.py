"""Raise the soft file-descriptor limit to the hard one, for both servers.

Why: every open connection (an app's keep-alive, a provider's, the router's gRPC
channel) holds a descriptor, and distributions start processes with a soft
limit of 1024 while allowing far more; a process that stays at 1024 refuses
connections (``accept()`` fails with EMFILE) long before the machine is short.
"""

from __future__ import annotations

import logging


def raise_file_limit(log: logging.Logger) -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit; logs ``file descriptor limit`` on ``log``
    and returns (before, after) soft."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
    log.info(
        "file descriptor limit",
        extra={"soft_before": soft, "soft": target, "hard": hard},
    )
    return soft, target
