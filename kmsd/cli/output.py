"""Output helpers shared by kmsctl's verbs: -o/--output, tables, missing values.

``-o text|json|jsonl`` is an option of every kmsctl parser (``KmsctlParser`` adds it from one
parent parser), so it may stand before or after the verb: the top-level parser holds the
default, every sub-parser's copy defaults to ``argparse.SUPPRESS`` so that it never overwrites
a value given earlier on the line.

- text: for people; a missing value is ``-``, an empty listing says ``none``.
- json: one indented document. A stream (``watch``, ``rotate status --follow``) prints one
  compact document per line instead, so that ``jq`` and line readers can follow it.
- jsonl: one compact line per item of a listing (one line for any other answer).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from kmsd.cli.parsing import CliParser

OUTPUTS = ("text", "json", "jsonl")
DEFAULT_OUTPUT = "text"
NONE = "none"  # what an empty listing prints
MISSING = "-"  # what a missing value prints


def output_options(default: str) -> argparse.ArgumentParser:
    """The parent parser that gives a kmsctl parser ``-o/--output``."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-o",
        "--output",
        choices=OUTPUTS,
        default=default,
        help="text (default), json (one document) or jsonl (one line per item)",
    )
    return parent


class KmsctlParser(CliParser):
    """A kmsctl parser: every verb takes ``-o/--output``, before or after it on the line."""

    def __init__(self, *args: Any, output_default: str | None = None, **kwargs: Any) -> None:
        # Sub-parsers are made by argparse with this class and no output_default: SUPPRESS.
        default = argparse.SUPPRESS if output_default is None else output_default
        kwargs["parents"] = [*kwargs.get("parents", ()), output_options(default)]
        super().__init__(*args, **kwargs)


def output_of(args: argparse.Namespace) -> str:
    return str(getattr(args, "output", DEFAULT_OUTPUT))


def compact(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def emit(
    args: argparse.Namespace,
    doc: Any,
    text: Callable[[Any], None],
    *,
    items: str | None = None,
) -> None:
    """Print an answer as asked; ``items`` names the list a jsonl listing prints line by line."""
    output = output_of(args)
    if output == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    elif output == "jsonl":
        for item in doc[items] if items is not None else [doc]:
            print(compact(item))
    else:
        text(doc)


def emit_stream(args: argparse.Namespace, doc: Any, text: Callable[[Any], None]) -> None:
    """Print one event of a stream: a compact JSON line with json or jsonl, flushed."""
    if output_of(args) == "text":
        text(doc)
    else:
        print(compact(doc))
    sys.stdout.flush()


def cell(value: Any) -> str:
    """A value as a table cell or field: ``-`` for a missing one, never ``None``."""
    if value is None or value == "":
        return MISSING
    return str(value)


def print_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    """A left-aligned table; ``none`` instead of a bare header when there are no rows."""
    if not rows:
        print(NONE)
        return
    # A deliberately blank cell ("") stays blank; only a missing one (None) is "-".
    shown = [[MISSING if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *shown, strict=False)]
    for row in (header, *shown):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


Subparsers = Any  # argparse's _SubParsersAction is private
