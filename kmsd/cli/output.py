"""Output helpers shared by kmsctl's verbs: tables, --output json, parser pieces."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any


def print_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


def emit(args: argparse.Namespace, doc: Any, text: Callable[[Any], None]) -> None:
    if getattr(args, "output", "text") == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        text(doc)


Subparsers = Any  # argparse's _SubParsersAction is private


def read_verb(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give a read verb its ``--output text|json``."""
    p.add_argument("--output", choices=("text", "json"), default="text")
    return p
