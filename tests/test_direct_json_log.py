"""router_common.logs.DirectJsonLog: the sidecar's access line without the logging machinery.

Same JSON object as configure_logging's formatter writes, key-scrubbed, in
batches; and an ordinary record whenever logging is set up some other way.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator

import pytest

from router_common import logs
from router_common.logs import DirectJsonLog, configure_logging
from sidecar.redaction import KeyRedactor
from tests.conftest import wait_for

SECRET = "sk-direct-log-0123456789abcdef"


@pytest.fixture
def logging_setup() -> Iterator[Callable[[], io.StringIO]]:
    """configure_logging to a buffer, called inside the test (pytest adds its own
    handlers to the root logger for each test phase); the root logger restored after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logs._installed)

    def configure() -> io.StringIO:
        out = io.StringIO()
        configure_logging("info", out)
        return out

    try:
        yield configure
    finally:
        root.handlers[:], root.level, logs._installed = saved[0], saved[1], saved[2]


def _lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_the_line_is_the_formatters_object(logging_setup: Callable[[], io.StringIO]) -> None:
    stream = logging_setup()
    fields = {"model": "m/x", "status": 200, "provider": None, "duration_ms": 1.25}
    logging.getLogger("sidecar").info("request", extra=fields)
    DirectJsonLog("sidecar").info("request", fields)  # no event loop: written at once
    via_logging, direct = _lines(stream)
    assert list(direct) == list(via_logging)  # same keys, same order
    assert {k: v for k, v in direct.items() if k != "time"} == {
        k: v for k, v in via_logging.items() if k != "time"
    }
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}$")
    assert stamp.match(direct["time"]) and stamp.match(via_logging["time"])


async def test_lines_are_batched_flushed_and_scrubbed(
    logging_setup: Callable[[], io.StringIO],
) -> None:
    stream = logging_setup()
    access = DirectJsonLog("sidecar", KeyRedactor([SECRET]).scrub, flush_interval_s=0.05)
    access.info("request", {"model": f"m/{SECRET}", "status": 200})
    access.info("request", {"model": "m/y", "status": 404})
    assert stream.getvalue() == ""  # held for the interval
    await wait_for(lambda: stream.getvalue().count("\n") == 2, timeout=3)
    first, second = _lines(stream)
    assert SECRET not in stream.getvalue() and first["model"] == "m/[REDACTED][REDACTED]"
    assert second["status"] == 404
    access.info("request", {"model": "m/z", "status": 200})
    access.flush()  # on shutdown: nothing held back
    assert _lines(stream)[-1]["model"] == "m/z"


def test_other_logging_setups_get_an_ordinary_record(
    logging_setup: Callable[[], io.StringIO], caplog: pytest.LogCaptureFixture
) -> None:
    stream = logging_setup()
    logging.getLogger().addHandler(caplog.handler)  # a second handler: no shortcut
    caplog.set_level(logging.INFO)
    DirectJsonLog("sidecar").info("request", {"status": 499})
    records = [r for r in caplog.records if r.name == "sidecar" and r.getMessage() == "request"]
    assert records and records[-1].status == 499  # type: ignore[attr-defined]
    assert '"status": 499' in stream.getvalue()  # through the formatter, as any record
    logging.getLogger("sidecar").setLevel(logging.WARNING)
    try:
        DirectJsonLog("sidecar").info("request", {"status": 200})
        assert all(getattr(r, "status", None) != 200 for r in caplog.records)  # level honoured
    finally:
        logging.getLogger("sidecar").setLevel(logging.NOTSET)
