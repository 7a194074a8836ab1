"""Durations as people type them (pure): ``90d``, ``12h``, ``15m``, ``30s``, ``2w``, ``1h30m``.

Every CLI option that takes a span of time (lifetimes, periods, holds, timeouts, "since")
parses it here, so ``90d`` means the same thing everywhere. A plain number keeps the unit the
option always had (days for ``--lifetime``, seconds for ``--timeout``), so scripts written
before units were accepted keep working.
"""

from __future__ import annotations

import re
from datetime import timedelta

from kmsd.errors import InvalidInput

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
UNIT_NAMES = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# One number and its unit; a duration is one or more of these, largest unit first ("1h30m").
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)")
_WHOLE = re.compile(r"(?:\s*\d+(?:\.\d+)?\s*[a-z]*)+")
# Spelled-out units people also type; each maps to the one-letter form.
_LONG = {
    "sec": "s",
    "secs": "s",
    "second": "s",
    "seconds": "s",
    "min": "m",
    "mins": "m",
    "minute": "m",
    "minutes": "m",
    "hr": "h",
    "hrs": "h",
    "hour": "h",
    "hours": "h",
    "day": "d",
    "days": "d",
    "week": "w",
    "weeks": "w",
}
# Far beyond any lifetime the profile allows (3650 days): a typo of zeros is refused, not
# turned into an overflow deep inside datetime.
MAX = timedelta(days=100 * 365)


def parse_duration(text: str, default_unit: str = "s") -> timedelta:
    """Parse ``90d``, ``1h30m`` or a plain number (in ``default_unit``); raise InvalidInput."""
    raw = text.strip().lower()
    example = "use e.g. 90d, 12h, 15m or 30s"
    if not raw or _WHOLE.fullmatch(raw) is None:
        raise InvalidInput(f"not a duration: {text!r} ({example})")
    total = 0.0
    seen: list[int] = []
    parts = _PART.findall(raw)
    for number, unit_text in parts:
        if not unit_text and len(parts) > 1:
            raise InvalidInput(f"{text!r}: every part needs a unit ({example})")
        unit = _LONG.get(unit_text, unit_text) or default_unit
        if unit not in UNIT_SECONDS:
            raise InvalidInput(f"unknown unit {unit_text!r} in {text!r} ({example})")
        size = UNIT_SECONDS[unit]
        if seen and size >= seen[-1]:
            raise InvalidInput(f"{text!r}: give the largest unit first, once each (e.g. 1h30m)")
        seen.append(size)
        total += float(number) * size
    if total > MAX.total_seconds():
        raise InvalidInput(f"{text!r} is longer than {MAX.days} days")
    return timedelta(seconds=total)


def whole(span: timedelta, unit: str, text: str) -> int:
    """``span`` as a whole number of ``unit`` (``d`` or ``s``); raise InvalidInput if not."""
    size = UNIT_SECONDS[unit]
    count, rest = divmod(span.total_seconds(), size)
    if rest:
        raise InvalidInput(f"{text!r} is not a whole number of {UNIT_NAMES[unit]}")
    return int(count)


def format_duration(span: timedelta) -> str:
    """The shortest exact spelling of ``span`` in the units above: ``90d``, ``1h30m``, ``0s``."""
    seconds = span.total_seconds()
    if seconds < 0:
        raise ValueError("a negative duration has no spelling")
    if seconds != int(seconds):
        return f"{seconds:g}s"
    left = int(seconds)
    parts = []
    for unit in ("d", "h", "m", "s"):
        count, left = divmod(left, UNIT_SECONDS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
