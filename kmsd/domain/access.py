"""Interim access decisions (until bindings arrive): admins write, signed-in callers read.

``KMSD_ADMINS`` holds ARN patterns; ``*`` matches within one ARN part only, never across ``:``,
so ``arn:aws:iam::123456789012:role/ops-*`` cannot be stretched to another account.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile("".join("[^:]*" if ch == "*" else re.escape(ch) for ch in pattern))


def arn_matches(pattern: str, arn: str) -> bool:
    """Return whether ``arn`` matches ``pattern`` (``*`` never crosses a ``:``)."""
    return _compile(pattern).fullmatch(arn) is not None


def is_admin(arn: str, admins: Iterable[str]) -> bool:
    """Return whether ``arn`` matches one of the admin patterns."""
    return any(arn_matches(p, arn) for p in admins)
