"""Command-line parsing shared by kmsd, kmsctl and kmsagent: errors, --version, durations.

``CliParser`` answers a mistake the way people expect: the usage of the verb they were typing,
one ``error:`` line that names the closest valid word ("did you mean show?"), exit status 2.
argparse reports an unknown option from the top-level parser (its sub-parsers only collect
leftovers); ``CliParser`` remembers the deepest parser that ran and lets that one report it.
argparse has no public hook for suggestions before Python 3.14, so ``_check_value`` (stable
since Python 3.2, typed in typeshed) is overridden for invalid choices.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from kmsd.domain.durations import parse_duration, whole
from kmsd.domain.profile import ALIASES, algorithm_names, fold_algorithm, resolve_algorithm
from kmsd.errors import InvalidInput

# The namespace attribute that carries the deepest parser up through its parents.
_LEAF = "_cli_leaf_parser"


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """``"; did you mean X?"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors come from the verb at fault, with a suggestion."""

    def parse_known_args(  # type: ignore[override]  # typeshed overloads on namespace
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        # Sub-parsers finish first, so the deepest one that ran is the one already recorded.
        if not hasattr(ns, _LEAF):
            setattr(ns, _LEAF, self)
        return ns, extras

    def parse_args(  # type: ignore[override]  # typeshed overloads on namespace
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        ns, extras = self.parse_known_args(args, namespace)
        leaf: CliParser = vars(ns).pop(_LEAF, self)
        if extras:
            leaf.error(leaf.unrecognized(extras))
        return ns

    def unrecognized(self, extras: list[str]) -> str:
        """The message for words this verb does not take, naming the option meant."""
        options = [s for a in self._actions for s in a.option_strings]
        first = extras[0]
        hint = did_you_mean(first.partition("=")[0], options) if first.startswith("-") else ""
        return f"unrecognized arguments: {' '.join(extras)}{hint}"

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is None or value in choices:
            return
        names = [str(c) for c in choices]
        hint = did_you_mean(str(value), names) or f" (choose from {', '.join(names)})"
        raise argparse.ArgumentError(action, f"invalid choice: {value!r}{hint}")

    def error(self, message: str) -> NoReturn:
        """Print this verb's usage and one ``error:`` line; exit 2 (as argparse does)."""
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


class VersionAction(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "print the version and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        # On stdout, as argparse's own version action prints it.
        print(f"{parser.prog} {version()}")
        parser.exit()


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=VersionAction)


def version() -> str:
    """The version of the installed ``kmsd`` distribution (``dev`` when run from a checkout)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("kmsd")
    except PackageNotFoundError:
        return "dev"


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer a shell's completion request (argcomplete), and return at once otherwise.

    argcomplete takes ~20 ms to import: it is imported only when a shell asks for completions.
    """
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        argcomplete.autocomplete(parser)


# -- argument types -------------------------------------------------------------------------
# Each turns InvalidInput from the pure parsers into argparse's error (usage, exit 2).


def _typed(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except InvalidInput as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name  # argparse names the type in "invalid <name> value" messages
    return convert


def _days(text: str) -> int:
    return whole(parse_duration(text, "d"), "d", text)


def _seconds(text: str) -> int:
    return whole(parse_duration(text, "s"), "s", text)


def _seconds_float(text: str) -> float:
    return parse_duration(text, "s").total_seconds()


def _gate_timeout(text: str) -> str:
    # Sent as plain seconds: every kmsd reads "5400s", not every one reads "1h30m".
    return f"{parse_duration(text, 's').total_seconds():g}s"


def _time(text: str, sign: int) -> str:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        pass
    else:
        if at.tzinfo is None:
            raise InvalidInput(f"{text!r} has no time zone (add Z or +00:00)")
        return at.isoformat()
    try:
        span = parse_duration(text, "s")
    except InvalidInput:
        raise InvalidInput(
            f"{text!r} is neither an ISO 8601 time with zone nor a duration such as 90d or 12h"
        ) from None
    return (datetime.now(UTC) + sign * span).isoformat(timespec="seconds")


def _ago(text: str) -> str:
    return _time(text, -1)


def _ahead(text: str) -> str:
    return _time(text, +1)


def _algorithm(text: str) -> str:
    name = resolve_algorithm(text)
    if name is None:
        raise InvalidInput(f"unknown algorithm {text!r}{did_you_mean(text, algorithm_names())}")
    # An alias with several candidates ("ec") is resolved by kmsd against the use's rule.
    return text if len(ALIASES.get(fold_algorithm(text), ())) > 1 else name


days = _typed(_days, "duration (days)")
seconds = _typed(_seconds, "duration (seconds)")
seconds_float = _typed(_seconds_float, "duration (seconds)")
gate_timeout = _typed(_gate_timeout, "duration")
time_ago = _typed(_ago, "time")
time_ahead = _typed(_ahead, "time")
algorithm = _typed(_algorithm, "algorithm")
