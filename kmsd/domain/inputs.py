"""Input values checked at the edge (pure): times a caller gives, refused before anything runs.

A time is refused unless it has a zone, is in the future and lies within MAX_AHEAD once in UTC:
``9999-12-31T23:59:59-14:00`` is year 10000 in UTC, which Python cannot represent - accepted
once, it reached SM and then broke every later step that touched it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from kmsd.errors import InvalidInput, PayloadTooLarge

# ASCII digits only: str.isdigit() and int() also take other scripts' digits (U+0663, U+FF13), so
# two readers of one id could disagree about what it names.
_ASCII_INT = re.compile(r"[0-9]{1,18}")
MAX_BIGINT = 2**63 - 1
# Secrets are flat maps of strings in practice; nothing kmsd takes needs deeper documents, and
# a deep one would exhaust a recursive encoder later (orjson stops at 255).
MAX_JSON_DEPTH = 32
YEARS = (1900, 9998)

# Secrets Manager's own limit on one version's value.
SM_MAX_VALUE_BYTES = 65536
# Nothing kmsd keeps should outlive this; far enough for any certificate or data key.
MAX_AHEAD = timedelta(days=100 * 366)


def parse_time(raw: object, field: str) -> datetime:
    """An ISO 8601 time with a zone, in UTC; refused when UTC cannot represent it."""
    when = None
    if isinstance(raw, str):
        try:
            when = datetime.fromisoformat(raw)
        except ValueError:
            when = None
    if when is None or when.tzinfo is None:
        raise InvalidInput(
            f"{field} must be an ISO 8601 time with a zone, e.g. 2027-01-01T00:00:00Z"
        )
    try:
        utc = when.astimezone(UTC)
    except OverflowError:
        utc = None
    # The edges of Python's range overflow on the way to PostgreSQL: nothing kmsd keeps or
    # filters on lies outside these years.
    if utc is None or not YEARS[0] <= utc.year <= YEARS[1]:
        raise InvalidInput(f"{field} is outside the range of dates kmsd keeps")
    return utc


def parse_expiry(raw: object, *, now: datetime, field: str = "expires_at") -> datetime:
    """An ISO 8601 time with a zone, in the future and at most MAX_AHEAD away, in UTC."""
    when = parse_time(raw, field)
    if when <= now:
        raise InvalidInput(f"{field} must be in the future")
    if when - now > MAX_AHEAD:
        raise InvalidInput(f"{field} must be within 100 years")
    return when


def check_depth(doc: object, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than ``limit`` (iteratively: no recursion to exhaust)."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        )
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    raise InvalidInput(f"the JSON document is nested deeper than {limit} levels")
                stack.append((child, depth + 1))


def check_value_size(size: int) -> None:
    """Refuse a value Secrets Manager would refuse, before anything is written (413)."""
    if size > SM_MAX_VALUE_BYTES:
        raise PayloadTooLarge(
            f"the value is {size} bytes; Secrets Manager stores at most "
            f"{SM_MAX_VALUE_BYTES} bytes (64 KiB) per secret version",
            limit=SM_MAX_VALUE_BYTES,
            size=size,
        )


def parse_int(raw: object, field: str, *, low: int, high: int) -> int:
    """A query parameter or body field that must be an integer in [low, high], ASCII digits."""
    if isinstance(raw, bool) or not (
        isinstance(raw, int) or (isinstance(raw, str) and _ASCII_INT.fullmatch(raw))
    ):
        raise InvalidInput(f"{field} must be an integer between {low} and {high}")
    value = int(raw)
    if not low <= value <= high:
        raise InvalidInput(f"{field} must be an integer between {low} and {high}")
    return value


def parse_id(raw: str) -> int | None:
    """A row id from a URL (a bigint identity), or None when ``raw`` can name no row."""
    if not _ASCII_INT.fullmatch(raw):
        return None
    value = int(raw)
    return value if 0 < value <= MAX_BIGINT else None
