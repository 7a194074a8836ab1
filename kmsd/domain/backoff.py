"""Capped, jittered exponential backoff (pure), shared by ``kmsctl watch`` and ``kmsd serve``.

Each delay is drawn from ``[d/2, d]`` where ``d`` doubles from ``initial`` up to ``cap``
("equal jitter"): a fleet that lost the same server at the same moment spreads its returns,
and nobody waits less than half the nominal delay, so a dead server is not hammered.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays for successive failed attempts; ``reset`` after a success."""

    def __init__(self, initial: float, cap: float, rng: random.Random | None = None) -> None:
        if not 0 < initial <= cap:
            raise ValueError("backoff needs 0 < initial <= cap")
        self.initial = initial
        self.cap = cap
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a key
        self._attempt = 0

    @property
    def attempts(self) -> int:
        """Failures since the last reset."""
        return self._attempt

    def nominal(self) -> float:
        """The upper bound of the next delay."""
        # min() before the power would overflow on a very long outage; 2**60 never does.
        return min(self.cap, self.initial * float(2 ** min(self._attempt, 60)))

    def next(self) -> float:
        """Return the delay before the next attempt and count a failure."""
        top = self.nominal()
        self._attempt += 1
        return self._rng.uniform(top / 2, top)

    def reset(self) -> None:
        """Start again from ``initial`` (call after a success)."""
        self._attempt = 0
