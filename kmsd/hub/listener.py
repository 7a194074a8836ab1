"""The waker: one dedicated LISTEN connection per replica, feeding the hub.

Theory of operation
-------------------
Writers insert a ``changes`` row and ``NOTIFY kmsd_changes, '<id>'`` in the transaction that
changes a node, so a notification can only be seen after the change is visible. NOTIFY is a
hint, the ``changes`` table is the truth: on any notification the processor reads every row
after the last id it handled (bursts coalesce into one read and one refresh), and hands their
paths to ``Hub.apply_changes``.

The connection lives outside the pool (asyncpg resets pooled connections with ``UNLISTEN *``).
When it drops - ``add_termination_listener``, or a ping (every ``KMSD_LISTEN_PING``) that takes
longer than ``KMSD_LISTEN_PING_TIMEOUT``, as a frozen backend or a silent network drop does -
the replica is *deaf*: ``/healthz`` says so, held polls are answered 503 with Retry-After so
their clients re-poll on a replica that can wake them, and new holds are refused. The waker
reconnects with jittered backoff, re-checks *every* cached and watched path (``Hub.resync``),
because notifications sent meanwhile are gone, and only then holds polls again; then it resumes
reading the change log from its last id.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

import asyncpg
import structlog

from kmsd.clock import Clock
from kmsd.db.changes import CHANGES_AFTER, CHANNEL, LAST_CHANGE, PRUNE
from kmsd.hub.hub import Hub
from kmsd.metrics import Metrics

log = structlog.get_logger(__name__)

# Rows read per round; a longer backlog is read in several rounds.
BATCH: Final = 5000
RECONNECT_BACKOFF_S: Final = (0.05, 5.0)
# How often one replica trims old change rows (any replica may; the DELETE is idempotent).
PRUNE_EVERY_S: Final = 300.0


class Waker:
    """Owns the LISTEN connection and the change-processing task."""

    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        hub: Hub,
        clock: Clock,
        metrics: Metrics,
        *,
        invalidations: Mapping[str, Callable[[], None]] | None = None,
        replica: str = "",
        ping_s: float = 2.0,
        ping_timeout_s: float = 3.0,
    ):
        self._dsn = dsn
        self._replica = replica
        self._ping_s = ping_s
        self._ping_timeout_s = ping_timeout_s
        # Other channels whose notifications (or a reconnect) drop an in-process cache.
        self._invalidations = dict(invalidations or {})
        self._pool = pool
        self._hub = hub
        self._clock = clock
        self._metrics = metrics
        self._dirty = asyncio.Event()
        self._lost = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._last_id = 0
        self._needs_resync = False
        self.connected = asyncio.Event()

    @property
    def last_id(self) -> int:
        return self._last_id

    async def start(self) -> None:
        """Connect and LISTEN, then note where the change log stands."""
        await self._connect()
        self._last_id = await self._pool.fetchval(LAST_CHANGE)

    async def _connect(self) -> None:
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._ping_timeout_s * 2,
            server_settings={"application_name": f"kmsd-listen/{self._replica}"},
        )
        conn.add_termination_listener(self._on_terminated)
        await conn.add_listener(CHANNEL, self._on_notify)
        for channel, invalidate in self._invalidations.items():
            await conn.add_listener(channel, lambda *_, fn=invalidate: fn())
            invalidate()  # anything may have changed while we were not listening
        self._conn = conn
        self._lost.clear()
        self.connected.set()
        log.info("listen_connected")

    def _on_notify(self, *_: Any) -> None:
        self._dirty.set()

    def _on_terminated(self, *_: Any) -> None:
        if self._lost.is_set():
            return
        self.connected.clear()
        self._lost.set()
        self._hub.deafen()

    async def run(self) -> None:
        """Process changes until cancelled; reconnect whenever the connection is lost."""
        tasks = [
            asyncio.create_task(self._process_forever(), name="kmsd-waker"),
            asyncio.create_task(self._supervise(), name="kmsd-listen-supervisor"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._conn is not None and not self._conn.is_closed():
                await self._conn.close()

    async def _supervise(self) -> None:
        last_prune = self._clock.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._ping_s)
            if not self._lost.is_set():
                if not await self._alive():
                    self._on_terminated()
                if self._clock.monotonic() - last_prune > PRUNE_EVERY_S:
                    last_prune = self._clock.monotonic()
                    await self._pool.execute(PRUNE)
                continue
            log.warning("listen_connection_lost")
            await self._reconnect()
            self._needs_resync = True
            self._dirty.set()

    async def _alive(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), self._ping_timeout_s)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        return True

    async def _reconnect(self) -> None:
        delay = RECONNECT_BACKOFF_S[0]
        if self._conn is not None and not self._conn.is_closed():
            self._conn.terminate()
        self._conn = None
        while True:
            try:
                await self._connect()
                self._metrics.listen_reconnects.inc()
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("listen_reconnect_failed", error=type(exc).__name__)
                await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - backoff jitter
                delay = min(delay * 2, RECONNECT_BACKOFF_S[1])

    async def _process_forever(self) -> None:
        delay = RECONNECT_BACKOFF_S[0]
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.process()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("change_processing_failed", error=type(exc).__name__)
                self._needs_resync = True
                await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - backoff jitter
                delay = min(delay * 2, RECONNECT_BACKOFF_S[1])
                self._dirty.set()
            else:
                delay = RECONNECT_BACKOFF_S[0]

    async def process(self) -> int:
        """Read changes after the last handled id, refresh the hub; return rows handled."""
        if self._needs_resync:
            self._needs_resync = False
            woken = await self._hub.resync()
            log.info("hub_resynced", woken=woken)
        if self.connected.is_set():
            self._hub.hear()
        handled = 0
        while True:
            rows = await self._pool.fetch(CHANGES_AFTER, self._last_id, BATCH)
            if not rows:
                return handled
            self._last_id = rows[-1]["id"]
            handled += len(rows)
            self._observe_lag(rows[-1]["committed_at"])
            await self._hub.apply_changes({r["path"] for r in rows})
            if len(rows) < BATCH:
                return handled

    def _observe_lag(self, committed_at: datetime) -> None:
        lag = (self._clock.now() - committed_at).total_seconds()
        self._metrics.notify_lag.observe(max(lag, 0.0))
