"""The hub: held polls, the effective-set cache they share, and waking them.

Theory of operation
-------------------
A poll for ``path`` holding ``version`` is first *registered* (``WaiterIndex``), then compared
with the path's current snapshot. Registering before reading is what makes wakes lossless: a
change that commits after the read is processed after the registration, so it finds the waiter.
``path_version`` only grows, so "stale" is ``sent < current`` and a client ahead of a not yet
refreshed cache simply waits for the refresh.

Snapshots (version + the serialised effective set) are cached per path and shared by every
waiter of that path: 10,000 woken agents cost one query batch and one serialisation. The cache
is kept fresh by ``apply_changes``, which the LISTEN side calls with the prefixes of committed
changes: every cached or watched path under a prefix is reloaded in one batch, and only waiters
whose version is now behind are answered. A path that no longer exists answers its waiters
with ``None`` (the handler turns it into a 404).

Deadlines are swept by one task (``run_sweeper``) from the index's heap, not by a timer per
poll; tests call ``expire_due`` with an injected clock instead. ``close`` answers every held poll
with ``ShuttingDown`` (a 503 with a jittered Retry-After) so a restart does not leave clients
hanging until their own timeouts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import asyncpg
import orjson
import structlog

from kmsd.clock import Clock
from kmsd.db import Conn, store
from kmsd.domain.names import NodePath
from kmsd.domain.tree import effective_document
from kmsd.errors import ShuttingDown
from kmsd.hub.index import PrefixSet, Waiter, WaiterIndex
from kmsd.metrics import Metrics

log = structlog.get_logger(__name__)

# Holds are shortened by up to this fraction so that renewals of polls started together spread
# out instead of arriving in step.
HOLD_JITTER: Final = 0.1
# Wakes are handed out this many at a time, yielding in between (see _refresh).
WAKE_BATCH: Final = 64
# Deadline sweep period: timeouts fire at most this late (holds are tens of seconds).
SWEEP_INTERVAL_S: Final = 0.25
# Cached snapshots of paths nobody waits on are dropped after this long unused.
CACHE_IDLE_S: Final = 600.0
# Clients told to come back after a restart spread their return over this window (seconds).
RETRY_AFTER_RANGE: Final = (1, 5)


_DEAF_DETAIL = (
    "this kmsd replica lost its change feed and cannot hold polls; retry (any replica) after "
    "Retry-After"
)


class _Timeout:
    """The hold ran out with nothing new: the handler answers 304."""


TIMEOUT: Final = _Timeout()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A path's effective set at one version, serialised once."""

    version: int
    body: bytes


@dataclass(slots=True)
class _CacheEntry:
    snapshot: Snapshot | None
    used_at: float


Outcome = Snapshot | None | _Timeout


class Hub:
    """Held polls and the snapshot cache of one replica."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        metrics: Metrics,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._metrics = metrics
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._index = WaiterIndex()
        self._cache: dict[str, _CacheEntry] = {}
        self._cached = PrefixSet()
        self._closing = False
        # Set while this replica's change feed (LISTEN) is down: it could not wake a poll.
        self._deaf = False
        metrics.held_polls.set_function(lambda: len(self._index))

    # -- polls -------------------------------------------------------------------------------

    @property
    def held(self) -> int:
        return len(self._index)

    def jittered(self, hold: float) -> float:
        """Shorten ``hold`` by a random fraction up to HOLD_JITTER."""
        return hold * (1.0 - self._rng.uniform(0.0, HOLD_JITTER))

    async def snapshot(self, path: NodePath) -> Snapshot | None:
        """The current snapshot of ``path`` (cached), or None if the path does not exist."""
        key = str(path)
        entry = self._cache.get(key)
        if entry is not None:
            entry.used_at = self._clock.monotonic()
            return entry.snapshot
        async with self._pool.acquire() as conn:
            loaded = (await self._load(conn, [key]))[key]
        if loaded is None:
            return None  # not cached: unknown paths must not grow the cache
        return self._store(key, loaded)

    async def park(self, path: NodePath, version: int, hold: float) -> Outcome | Waiter:
        """Answer at once, or register a poll and return its Waiter.

        The caller awaits ``waiter.handle`` (an Outcome, or ShuttingDown raised) and then calls
        ``release``. Parking returns instead of awaiting so that no frame of the hub stays
        alive for the whole hold: with 10,000 held polls every frame counts.
        """
        if self._closing:
            raise ShuttingDown(retry_after=self._retry_after())
        if self._deaf and hold > 0:
            raise ShuttingDown(_DEAF_DETAIL, retry_after=self._retry_after())
        if hold <= 0:
            snap = await self.snapshot(path)
            return snap if snap is None or snap.version > version else TIMEOUT
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        waiter = Waiter(str(path), version, self._clock.monotonic() + hold, future)
        self._index.add(waiter)
        try:
            snap = await self.snapshot(path)  # after registering: see the module docstring
        except BaseException:
            self.release(waiter)
            raise
        if snap is None or snap.version > version:
            self.release(waiter)
            return snap
        return waiter

    def release(self, waiter: Waiter) -> None:
        """Forget a parked poll (answered, timed out, or its client gone); idempotent."""
        self._index.remove(waiter)

    # -- changes -----------------------------------------------------------------------------

    async def apply_changes(self, prefixes: Iterable[str]) -> int:
        """Reload every cached or watched path under ``prefixes``; wake those that moved."""
        affected: set[str] = set()
        for prefix in prefixes:
            affected |= self._index.paths_under(prefix) | self._cached.under(prefix)
        return await self._refresh(affected)

    async def resync(self) -> int:
        """Re-check every cached and watched path (after notifications may have been lost)."""
        return await self._refresh(self._index.watched_paths() | self._cached.members())

    async def _refresh(self, paths: set[str]) -> int:
        if not paths:
            return 0
        started = time.perf_counter()
        async with self._pool.acquire() as conn:
            loaded = await self._load(conn, sorted(paths))
        woken = 0
        for path, snap in loaded.items():
            current = self._store(path, snap, authoritative=True)
            behind = (
                self._index.waiters_of(path)
                if current is None
                else self._index.waiters_behind(path, current.version)
            )
            for waiter in behind:
                self._index.remove(waiter)
                if not waiter.handle.done():
                    waiter.handle.set_result(current)
                    woken += 1
                    if woken % WAKE_BATCH == 0:
                        # Let other ready work (the write that caused this change, say) run
                        # between batches instead of after every woken poll's answer.
                        await asyncio.sleep(0)
        self._metrics.wakes.inc(woken)
        self._metrics.wake_seconds.observe(time.perf_counter() - started)
        return woken

    async def _load(self, conn: Conn, paths: list[str]) -> dict[str, Snapshot | None]:
        parsed = [NodePath.parse(p) for p in paths]
        chains = await store.load_chains(conn, parsed)
        out: dict[str, Snapshot | None] = {}
        for path in paths:
            found = chains[path]
            if found is None:
                out[path] = None
                continue
            version, chain = found
            body = orjson.dumps(effective_document(path, version, chain))
            out[path] = Snapshot(version, body)
        return out

    def _store(
        self, path: str, snap: Snapshot | None, *, authoritative: bool = False
    ) -> Snapshot | None:
        """Cache ``snap`` unless a newer one is already there (versions only grow).

        Only the change processor (``authoritative``) may record that a path is gone: a
        handler's read racing a deletion must not hide a path that the processor will settle.
        """
        entry = self._cache.get(path)
        now = self._clock.monotonic()
        if entry is None:
            self._cache[path] = _CacheEntry(snap, now)
            self._cached.add(path)
            return snap
        entry.used_at = now
        old = entry.snapshot
        if snap is None:
            if authoritative:
                entry.snapshot = None
        elif old is None or snap.version > old.version:
            entry.snapshot = snap
        return entry.snapshot

    # -- time --------------------------------------------------------------------------------

    def expire_due(self) -> int:
        """Answer polls whose hold ran out; return how many."""
        expired = self._index.expire(self._clock.monotonic())
        for waiter in expired:
            if not waiter.handle.done():
                waiter.handle.set_result(TIMEOUT)
        return len(expired)

    def evict_idle(self) -> int:
        """Drop cached snapshots of paths nobody watched for CACHE_IDLE_S; return how many."""
        now = self._clock.monotonic()
        watched = self._index.watched_paths()
        idle = [
            path
            for path, entry in self._cache.items()
            if now - entry.used_at > CACHE_IDLE_S and path not in watched
        ]
        for path in idle:
            del self._cache[path]
            self._cached.discard(path)
        return len(idle)

    async def run_sweeper(self) -> None:
        """The one task that times out held polls (and now and then trims the cache)."""
        rounds_per_eviction = int(CACHE_IDLE_S / 10 / SWEEP_INTERVAL_S)
        rounds = 0
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.expire_due()
            rounds += 1
            if rounds % rounds_per_eviction == 0:
                self.evict_idle()

    # -- shutdown ----------------------------------------------------------------------------

    def _retry_after(self) -> int:
        return self._rng.randint(*RETRY_AFTER_RANGE)

    @property
    def closing(self) -> bool:
        """True once shutdown began: long-lived answers (server-sent events) end too."""
        return self._closing

    def deafen(self) -> int:
        """The change feed is down: answer held polls (and refuse new ones) with a 503 and
        Retry-After, so clients re-poll on a replica that can wake them; return how many."""
        self._deaf = True
        waiters = self._index.drain()
        for waiter in waiters:
            if not waiter.handle.done():
                waiter.handle.set_exception(
                    ShuttingDown(_DEAF_DETAIL, retry_after=self._retry_after())
                )
        if waiters:
            log.warning("hub_polls_moved", answered=len(waiters))
        return len(waiters)

    def hear(self) -> None:
        """The change feed is back (and resynced): hold polls again."""
        self._deaf = False

    def close(self) -> int:
        """Refuse new polls and answer every held one with ShuttingDown; return how many."""
        self._closing = True
        waiters = self._index.drain()
        for waiter in waiters:
            if not waiter.handle.done():
                waiter.handle.set_exception(ShuttingDown(retry_after=self._retry_after()))
        log.info("hub_closed", answered=len(waiters))
        return len(waiters)
