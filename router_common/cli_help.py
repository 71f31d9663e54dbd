"""``--help`` that states every option's default, so nobody has to read the source.

argparse's own ``ArgumentDefaultsHelpFormatter`` appends ``(default: …)`` even
where the help text already says it, and prints ``None`` for "not set". This
one appends the default only where the text does not mention one, writes
"none" for unset values, and leaves required options and plain on/off flags alone.
"""

from __future__ import annotations

import argparse
import re

_STATES_DEFAULT = re.compile(r"\bdefault\b", re.IGNORECASE)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: VALUE)`` to every option whose help does not state its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            _STATES_DEFAULT.search(text)
            or not action.option_strings
            or action.required
            or action.default is argparse.SUPPRESS
            or action.nargs == 0  # --flag switches: off unless given
        ):
            return text
        if action.default in (None, [], ""):
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"
