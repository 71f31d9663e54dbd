"""Flags that fall back to an environment variable, shared by ``router-service`` and
``router-sidecar``.

Both CLIs read every flag from a variable too (the flag wins), which is how
Kubernetes manifests configure a container. The value taken from a variable used
to be handed to argparse as the flag's default, so a bad ``ROUTER_GRPC_PORT=abc``
was reported as ``argument --grpc-port: ...``: the operator, who never typed that
flag, went looking for it in the manifest's ``args``. Here a variable's value is
converted after parsing, with the flag's own converter, and a bad one exits 2
with one line naming the variable, the flag it sets and its value in JSON.

Defaults stay the built-in ones, so ``--help`` never prints a value taken from
the environment (which may be a secret).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from router_common.json_text import as_json

#: Attribute set on an argparse action backed by a variable.
_VARIABLE = "env_variable"
_CONVERT = "env_convert"
_SECRET = "env_secret"
#: Where parse_with_env records which destinations came from a variable.
_SOURCES = "_env_sources"

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


def parse_bool(text: str) -> bool:
    """One spelling of on/off for every boolean variable of every CLI (any case)."""
    low = text.strip().lower()
    if low in TRUE_WORDS:
        return True
    if low in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(
        f"expected a boolean ({'/'.join(w for w in TRUE_WORDS + FALSE_WORDS if w)}), "
        f"got {as_json(text)}"
    )


class _FromEnv:
    """A variable's raw text, parked in the namespace until parsing is over.

    Not a ``str``, so argparse does not convert it as a default (and report the flag)."""

    __slots__ = ("raw",)

    def __init__(self, raw: str) -> None:
        self.raw = raw


def env_backed(
    action: argparse.Action,
    variable: str,
    convert: Callable[[str], Any] | None = None,
    *,
    secret: bool = False,
) -> argparse.Action:
    """Mark ``action`` as falling back to ``variable``; ``convert`` defaults to its type.

    ``secret``: an error about the variable never prints its value."""
    setattr(action, _VARIABLE, variable)
    setattr(action, _CONVERT, convert)
    setattr(action, _SECRET, secret)
    return action


def _why(convert: Callable[[str], Any], exc: Exception) -> str:
    if isinstance(exc, argparse.ArgumentTypeError):
        return str(exc)
    # int("x") says "invalid literal for int() with base 10: 'x'": Python, not the contract.
    if convert is int:
        return "expected an integer"
    if convert is float:
        return "expected a number"
    return str(exc) or type(exc).__name__


def fail(prog: str, message: str) -> NoReturn:
    """One line on stderr and status 2, as argparse exits for a bad flag."""
    print(f"{prog}: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_with_env(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> argparse.Namespace:
    """Parse ``argv``; every option not given falls back to its variable when that is set.

    A variable's value that its flag's converter (or choices) refuses exits 2 with
    ``PROG: VARIABLE=VALUE (sets --flag): why``, before anything starts.
    """
    import os

    env = os.environ if env is None else env
    namespace = argparse.Namespace()
    backed = [a for a in parser._actions if getattr(a, _VARIABLE, None)]
    for action in backed:
        variable = getattr(action, _VARIABLE)
        if variable in env:
            setattr(namespace, action.dest, _FromEnv(env[variable]))
    args = parser.parse_args(argv, namespace)
    sources: dict[str, tuple[str, str]] = {}
    for action in backed:
        value = getattr(args, action.dest, None)
        if not isinstance(value, _FromEnv):
            continue  # the flag was given: it wins
        variable = getattr(action, _VARIABLE)
        convert: Callable[[str], Any] = getattr(action, _CONVERT) or action.type or str  # type: ignore[assignment]
        flag = action.option_strings[-1]
        shown = (
            "(value not shown: it may be a secret)"
            if getattr(action, _SECRET, False)
            else as_json(value.raw)
        )
        setting = f"{variable}={shown} (sets {flag})"
        try:
            converted = convert(value.raw)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            fail(parser.prog, f"{setting}: {_why(convert, exc)}")
        if action.choices is not None and converted not in action.choices:
            choices = as_json(list(action.choices))
            fail(parser.prog, f"{setting}: expected one of {choices}")
        setattr(args, action.dest, converted)
        sources[action.dest] = (variable, flag)
    setattr(args, _SOURCES, sources)
    return args


def origin(args: argparse.Namespace, dest: str, flag: str) -> str:
    """How to name a setting in an error: ``--flag``, or ``VARIABLE (sets --flag)``
    when its value came from the environment."""
    source = getattr(args, _SOURCES, {}).get(dest)
    return f"{source[0]} (sets {flag})" if source else flag


def relabel(args: argparse.Namespace, message: str) -> str:
    """A check's message that starts with a flag, starting with its variable instead
    when the value came from the environment (the checks run after parsing and
    only know flags; the operator may have set only the variable)."""
    for variable, flag in getattr(args, _SOURCES, {}).values():
        rest = message[len(flag) :]
        follower = rest[:1]  # "--redis" must not match "--redis-prefix must be ..."
        if message.startswith(flag) and not (follower.isalnum() or follower in ("-", "_")):
            return f"{variable} (sets {flag}){rest}"
    return message
