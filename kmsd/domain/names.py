"""Tree paths and segment names.

A path is ``namespace/application[/child...]``. Every segment, and every secret name, matches
``[a-z0-9][a-z0-9._-]{0,62}``: lower case so that paths compare as they read, short enough to
fit SM's 512-character secret names at a useful depth, no ``/`` so that splitting is exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kmsd.errors import InvalidInput

SEGMENT_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
# SM secret names are at most 512 characters; with a prefix and a name this keeps a margin.
MAX_DEPTH = 6
SEGMENT_RULE = "[a-z0-9][a-z0-9._-]{0,62}"


def check_segment(segment: str, what: str = "segment") -> str:
    """Return ``segment`` if it is a valid name, else raise InvalidInput naming the rule."""
    if not SEGMENT_RE.fullmatch(segment):
        shown = segment if len(segment) <= 80 else segment[:77] + "..."
        raise InvalidInput(
            f"{what} {shown!r} is not valid: names match {SEGMENT_RULE} "
            "(lower-case letters, digits, '.', '_' and '-', starting with a letter or digit, "
            "at most 63 characters)",
            rule=SEGMENT_RULE,
        )
    return segment


@dataclass(frozen=True, slots=True)
class NodePath:
    """A validated tree path, held as its segments."""

    segments: tuple[str, ...]

    @classmethod
    def parse(cls, raw: str) -> NodePath:
        """Parse ``a/b/c`` (no leading, trailing or doubled slashes)."""
        if not raw:
            raise InvalidInput("path is empty: expected namespace[/application[/child...]]")
        segments = tuple(raw.split("/"))
        if len(segments) > MAX_DEPTH:
            raise InvalidInput(f"path {raw[:200]!r} is deeper than {MAX_DEPTH} levels")
        for seg in segments:
            check_segment(seg, "path segment")
        return cls(segments)

    @property
    def depth(self) -> int:
        return len(self.segments)

    @property
    def parent(self) -> NodePath | None:
        return NodePath(self.segments[:-1]) if len(self.segments) > 1 else None

    @property
    def is_namespace(self) -> bool:
        return len(self.segments) == 1

    @property
    def application(self) -> NodePath:
        """The application this path belongs to (its first two segments)."""
        if len(self.segments) < 2:
            raise InvalidInput(f"path {str(self)!r} names a namespace, not an application")
        return NodePath(self.segments[:2])

    def ancestors_from_application(self) -> list[NodePath]:
        """The application, then each child down to (and including) this path."""
        return [NodePath(self.segments[:i]) for i in range(2, len(self.segments) + 1)]

    def __str__(self) -> str:
        return "/".join(self.segments)


def kind_of_depth(depth: int) -> str:
    """Name the level of a node: namespace, application or child node."""
    return {1: "namespace", 2: "application"}.get(depth, "node")
