"""A log-line throttle (pure): one line per key and interval, with a count of those dropped.

A client can make kmsd log: every malformed request, every connection shed at the cap, every
``accept()`` that fails at the descriptor limit is something an operator wants to know about,
but once, not once per attempt (an unthrottled accept loop at the limit wrote millions of lines
in seconds). So the first occurrence of a key is let through, repeats within ``interval_s`` are
counted and dropped, and the next line let through for that key says how many were dropped.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

# Keys are event names and exception classes, a short list; the bound only keeps a bug that
# made keys from request data from growing the map without end.
MAX_KEYS = 256


@dataclass(slots=True)
class _Window:
    opened: float
    dropped: int = 0


class Throttle(Generic[K]):
    """Decide, per key, which occurrences are logged; time is given by the caller."""

    def __init__(self, interval_s: float, max_keys: int = MAX_KEYS) -> None:
        if not interval_s > 0 or max_keys < 1:
            raise ValueError("a throttle needs a positive interval and room for one key")
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._windows: dict[K, _Window] = {}

    def admit(self, key: K, now: float) -> int | None:
        """None: drop this occurrence; else log it, with the count dropped since the last one."""
        window = self._windows.get(key)
        if window is not None and now - window.opened < self.interval_s:
            window.dropped += 1
            return None
        dropped = window.dropped if window is not None else 0
        # Re-inserted at the end, so the first key is the one that has been quiet longest.
        self._windows.pop(key, None)
        self._windows[key] = _Window(now)
        if len(self._windows) > self.max_keys:
            del self._windows[next(iter(self._windows))]
        return dropped
