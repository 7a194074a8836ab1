"""Held polls per session token: one token cannot hold a replica's file descriptors hostage.

An agent holds one poll per path it serves; a token holding more than ``limit`` at once on one
replica is not an agent but a loop or an attack, and its next poll is answered 429 with
Retry-After. Keyed by the token's hash (never the token), counted in memory per replica.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from kmsd.errors import TooManyRequests


class PollQuota:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[bytes, int] = {}

    def held(self, key: bytes) -> int:
        return self._held.get(key, 0)

    @contextmanager
    def hold(self, key: bytes) -> Iterator[None]:
        """Count one held poll of ``key`` for the duration; refuse one over the limit."""
        count = self._held.get(key, 0)
        if count >= self.limit:
            raise TooManyRequests(
                f"this token already holds {count} polls on this replica (at most "
                f"{self.limit}: one per path is what an agent needs)",
                retry_after=5,
            )
        self._held[key] = count + 1
        try:
            yield
        finally:
            left = self._held[key] - 1
            if left:
                self._held[key] = left
            else:
                del self._held[key]
