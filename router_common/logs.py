"""Structured JSON logging shared by every process in the project.

One JSON object per line on stderr, so log pipelines (Loki, Cloud Logging,
ELK) can index fields without regexes. Callers pass facts as ``extra``; the
rule that prompts, completions and API keys never appear is kept by never
passing them, and the sidecar's tests grep the output to prove it.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str = "info", stream=None) -> None:
    """Route the root logger to one JSON line per record."""
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
