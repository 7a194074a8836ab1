"""The pure part of the hub: which polls wait on which paths, and until when.

Theory of operation
-------------------
A held poll is a ``Waiter``: a path, the ``path_version`` the client holds, a deadline, and an
opaque ``handle`` that the I/O layer uses to answer it (an asyncio future there, anything in
tests). The index answers three questions, each without scanning every waiter:

* ``paths_under(prefix)`` - which watched paths can a change at ``prefix`` affect? A change to
  a node touches that node's subtree, so every watched path is registered under each of its
  ancestors (at most six), and the lookup is one dict access.
* ``waiters_behind(path, version)`` - which waiters of a path hold a version older than the
  current one? Versions only grow, so "older" is a plain ``<``.
* ``expire(now)`` - which waiters reached their deadline? Deadlines sit in a heap; waiters
  answered early are removed from their path at once and skipped lazily in the heap, so no
  poll costs a timer of its own.

Nothing here does I/O or knows about time beyond the numbers it is given; ``kmsd.hub.hub``
supplies the clock and the futures.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False, slots=True)
class Waiter:
    """One held poll. Identity-compared: two polls with equal fields are still two."""

    path: str
    version: int
    deadline: float
    handle: Any = None
    done: bool = field(default=False)


def ancestors(path: str) -> list[str]:
    """``a/b/c`` -> ``[a, a/b, a/b/c]``: the prefixes a change can arrive at.

    The namespace is one of them: deleting a namespace recursively is a change at ``a``.
    """
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


class PrefixSet:
    """A set of paths that also answers "which members are at or below this prefix"."""

    def __init__(self) -> None:
        self._members: set[str] = set()
        self._under: dict[str, set[str]] = {}

    def __contains__(self, path: object) -> bool:
        return path in self._members

    def __len__(self) -> int:
        return len(self._members)

    def add(self, path: str) -> None:
        if path in self._members:
            return
        self._members.add(path)
        for prefix in ancestors(path):
            self._under.setdefault(prefix, set()).add(path)

    def discard(self, path: str) -> None:
        if path not in self._members:
            return
        self._members.discard(path)
        for prefix in ancestors(path):
            under = self._under[prefix]
            under.discard(path)
            if not under:
                del self._under[prefix]

    def under(self, prefix: str) -> set[str]:
        """Members equal to ``prefix`` or below it."""
        return set(self._under.get(prefix, ()))

    def members(self) -> set[str]:
        return set(self._members)


class WaiterIndex:
    """Waiters by path, watched paths by ancestor, deadlines in a heap."""

    def __init__(self) -> None:
        self._by_path: dict[str, set[Waiter]] = {}
        self._paths = PrefixSet()
        self._deadlines: list[tuple[float, int, Waiter]] = []
        self._answered_in_heap = 0
        self._count = 0
        self._seq = itertools.count()

    def __len__(self) -> int:
        return self._count

    def add(self, waiter: Waiter) -> None:
        """Register a waiter."""
        waiters = self._by_path.get(waiter.path)
        if waiters is None:
            waiters = self._by_path[waiter.path] = set()
            self._paths.add(waiter.path)
        if waiter not in waiters:
            self._count += 1
        waiters.add(waiter)
        heapq.heappush(self._deadlines, (waiter.deadline, next(self._seq), waiter))

    def remove(self, waiter: Waiter) -> None:
        """Forget a waiter (answered, timed out or gone); idempotent."""
        if self._unregister(waiter):
            self._answered_in_heap += 1  # its heap entry stays until popped or compacted
            self._compact()

    def _unregister(self, waiter: Waiter) -> bool:
        """Take a waiter off its path; return whether it was registered."""
        waiter.done = True
        waiters = self._by_path.get(waiter.path)
        if waiters is None or waiter not in waiters:
            return False
        waiters.discard(waiter)
        self._count -= 1
        if not waiters:
            del self._by_path[waiter.path]
            self._paths.discard(waiter.path)
        return True

    def paths_under(self, prefix: str) -> set[str]:
        """Watched paths equal to ``prefix`` or below it."""
        return self._paths.under(prefix)

    def watched_paths(self) -> set[str]:
        return set(self._by_path)

    def waiters_of(self, path: str) -> list[Waiter]:
        return list(self._by_path.get(path, ()))

    def waiters_behind(self, path: str, version: int) -> list[Waiter]:
        """Waiters of ``path`` holding a version older than ``version``."""
        return [w for w in self._by_path.get(path, ()) if w.version < version]

    def _compact(self) -> None:
        """Drop answered waiters from the heap once they are most of it.

        Lazy deletion alone keeps an answered poll's entry (and the poll's objects) until its
        deadline, up to the maximum hold: a fleet woken every few seconds would pile them up.
        """
        heap = self._deadlines
        if len(heap) > 1024 and self._answered_in_heap * 2 > len(heap):
            self._deadlines = [entry for entry in heap if not entry[2].done]
            heapq.heapify(self._deadlines)
            self._answered_in_heap = 0

    def expire(self, now: float) -> list[Waiter]:
        """Remove and return the waiters whose deadline is at or before ``now``."""
        due: list[Waiter] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, waiter = heapq.heappop(heap)
            if waiter.done:
                self._answered_in_heap -= 1
            else:
                self._unregister(waiter)
                due.append(waiter)
        return due

    def next_deadline(self) -> float | None:
        """The earliest pending deadline (skipping answered waiters), or None."""
        heap = self._deadlines
        while heap and heap[0][2].done:
            heapq.heappop(heap)
            self._answered_in_heap -= 1
        return heap[0][0] if heap else None

    def drain(self) -> list[Waiter]:
        """Remove and return every waiter (shutdown)."""
        everyone = [w for ws in self._by_path.values() for w in ws]
        for waiter in everyone:
            self._unregister(waiter)
        self._deadlines.clear()
        self._answered_in_heap = 0
        return everyone

    def remove_all(self, waiters: Iterable[Waiter]) -> None:
        for waiter in waiters:
            self.remove(waiter)
