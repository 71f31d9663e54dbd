"""Every console script's ``--help`` states each option's default (issue 12, item 7)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from fake_provider.cli import build_parser as fake_parser
from router_demo.cli import parse_args as demo_parse_args
from router_service.cli import parse_args as router_parse_args
from sidecar.config import build_parser as sidecar_parser

#: On/off switches have no value to default to.
SWITCHES = {"--help", "--no-live", "--json"}


def _option_blocks(help_text: str) -> dict[str, str]:
    """``{'--flag': 'its help text'}`` from argparse's options section."""
    blocks: dict[str, str] = {}
    current = None
    for line in help_text.split("options:", 1)[1].splitlines():
        m = re.match(r"^  (-\w, )?(--[\w-]+)", line)
        if m:
            current = m.group(2)
            blocks[current] = line
        elif current and line.startswith("    "):
            blocks[current] += " " + line.strip()
    return blocks


def _help(show: Callable[[], object], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        show()
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "show",
    [
        lambda: router_parse_args(["--config", "x.yaml", "--help"]),
        lambda: sidecar_parser().parse_args(["--help"]),
        lambda: fake_parser().parse_args(["--help"]),
        lambda: demo_parse_args(["--help"]),
    ],
    ids=["router-service", "router-sidecar", "fake-provider", "router-demo"],
)
def test_every_option_states_its_default(
    show: Callable[[], object], capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = _option_blocks(_help(show, capsys))
    assert len(blocks) >= 3
    missing = [
        flag
        for flag, text in blocks.items()
        if flag not in SWITCHES and flag != "--config" and "default" not in text.lower()
    ]
    assert missing == []


def test_router_help_names_the_bind_address_default(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = _option_blocks(_help(lambda: router_parse_args(["--help"]), capsys))
    assert "0.0.0.0" in blocks["--host"]


def test_sidecar_help_shows_defaults_as_the_flags_take_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No Python spellings: "Default: None." (no value), "Default: ." (an empty string)
    and "Default: False." (the switch takes true/false) read as typos to a newcomer."""
    blocks = _option_blocks(_help(lambda: sidecar_parser().parse_args(["--help"]), capsys))
    odd = {
        flag: text
        for flag, text in blocks.items()
        if re.search(r"Default: (None|True|False|)\.", text)
    }
    assert odd == {}
    assert "Default: none." in blocks["--provider-first-token-timeouts"]
    assert "Default: false." in blocks["--hedge"]
    assert "dns:///" in blocks["--router"]


def test_every_router_flag_is_in_a_readme_flag_table(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's "Running the router" table (and the Redis section's) is where a
    newcomer looks a flag up; --ingest-share was only in prose 1,200 lines further on."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table_rows = "\n".join(line for line in readme.splitlines() if line.startswith("| `--"))
    text = _help(lambda: router_parse_args(["--config", "x.yaml", "--help"]), capsys)
    flags = set(re.findall(r"^  (--[\w-]+)", text, re.M)) - {"--help"}
    missing = sorted(f for f in flags if not re.search(rf"`{f}[` ]", table_rows))
    assert missing == []


def test_router_help_never_prints_the_redis_password_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found by a secrets audit: --help appended "(default: <ROUTER_REDIS_URL>)", so
    # anyone running --help in the pod printed the Redis password.
    monkeypatch.setenv("ROUTER_REDIS_URL", "redis://:hunter2-redis-password@redis.internal:6379/0")
    text = _help(lambda: router_parse_args(["--config", "x.yaml", "--help"]), capsys)
    assert "hunter2-redis-password" not in text
    assert "default: none" in _option_blocks(text)["--redis"]


def test_router_help_shows_no_internal_field_name_as_a_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Found by the README audit: --http-idle-timeout-s showed HTTP_KEEPALIVE_TIMEOUT_S
    (ConnectionLimits' field) beside its variable ROUTER_HTTP_IDLE_TIMEOUT_S, so a
    reader guessing the variable from the usage line got a name nothing reads."""
    text = _help(lambda: router_parse_args(["--help"]), capsys)
    for flag, block in _option_blocks(text).items():
        shown = block.split()[1] if len(block.split()) > 1 else ""
        own = flag.lstrip("-").replace("-", "_").upper()
        if shown.isupper():
            assert shown in {own, "SECONDS", "URL", "PATH"}, (flag, shown)
