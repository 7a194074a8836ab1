"""Fenced leadership: one scheduler leader at a time, and a deposed one cannot act.

Theory of operation
-------------------
The leader holds a PostgreSQL session advisory lock on a dedicated connection
(``application_name`` ``kmsd-leader/<replica>``). Taking the lock is not enough: a leader whose
connection died still *believes* it leads while the lock is free for another replica. So:

- on taking the lock the new leader bumps ``leadership.epoch`` (on the same connection) and
  keeps the number as its fencing token;
- every loop, before acting, it checks the connection (a query bounded by a short timeout that
  also confirms the epoch is still its own); a failure, a timeout or a termination
  notice ends its leadership at once;
- every leader-only change (a rotation step of the driver, a scheduled renewal's claim, a
  webhook delivery's claim) calls ``kmsd_check_fence(epoch)`` in its own transaction. The
  function takes the leadership row FOR SHARE, so a takeover's epoch bump waits for leader
  transactions in flight, and any later change by the old epoch fails with SQLSTATE KF001,
  which the caller turns into ``FencedOut`` and gives up leadership.

A deposed leader can therefore still *finish* a transaction it began before the takeover, but
never start a new one: webhooks are claimed per delivery id under the fence, so each is sent
by one leader (receivers may still de-duplicate by ``X-Kmsd-Delivery``, which at-least-once
delivery over HTTP always needs).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import asyncpg
import structlog

from kmsd.db import Conn
from kmsd.errors import FencedOut
from kmsd.metrics import Metrics

log = structlog.get_logger(__name__)

LEADER_LOCK_KEY: Final = 0x6B6D7372  # "kmsr"
FENCE_SQLSTATE: Final = "KF001"
_TAKE = "SELECT pg_try_advisory_lock($1)"
_BUMP = """
UPDATE leadership SET epoch = epoch + 1, holder = $1, since = now()
WHERE name = 'scheduler' RETURNING epoch
"""
# Still ours: our session holds the lock and nobody bumped the epoch since.
_CONFIRM = """
SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
               AND pid = pg_backend_pid() AND objsubid = 1
               AND objid::bigint = $1::bigint % 4294967296)
   AND (SELECT epoch FROM leadership WHERE name = 'scheduler') = $2
"""
_CHECK_FENCE = "SELECT kmsd_check_fence($1)"


async def check_fence(conn: Conn, epoch: int | None) -> None:
    """In the caller's transaction: refuse the change unless ``epoch`` is the current one."""
    if epoch is None:
        return  # not a leader-only change (an operator's command)
    try:
        await conn.execute(_CHECK_FENCE, epoch)
    except asyncpg.PostgresError as exc:
        if getattr(exc, "sqlstate", None) == FENCE_SQLSTATE:
            raise FencedOut(f"leadership epoch {epoch} was taken over") from None
        raise


class Leadership:
    """This replica's claim on the scheduler's leadership."""

    def __init__(
        self, dsn: str, replica: str, metrics: Metrics, *, check_timeout_s: float = 2.0
    ) -> None:
        self._dsn = dsn
        self._replica = replica
        self._metrics = metrics
        self._timeout = check_timeout_s
        self._conn: asyncpg.Connection | None = None
        self.epoch: int | None = None

    @property
    def leader(self) -> bool:
        return self.epoch is not None

    async def check(self) -> bool:
        """Take leadership if it is free, confirm it if held; True while this replica leads."""
        try:
            async with asyncio.timeout(self._timeout):
                conn = await self._connection()
                if self.epoch is None:
                    if await conn.fetchval(_TAKE, LEADER_LOCK_KEY):
                        epoch = int(await conn.fetchval(_BUMP, self._replica))
                        self._gain(epoch)
                elif not await conn.fetchval(_CONFIRM, LEADER_LOCK_KEY, self.epoch):
                    self.lose("taken_over")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self.lose(f"connection_{type(exc).__name__}")
        return self.leader

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            conn = await asyncpg.connect(
                self._dsn, server_settings={"application_name": f"kmsd-leader/{self._replica}"}
            )
            conn.add_termination_listener(self._on_terminated)
            self._conn = conn
        return self._conn

    def _on_terminated(self, *_: Any) -> None:
        self.lose("connection_terminated")

    def _gain(self, epoch: int) -> None:
        self.epoch = epoch
        self._metrics.scheduler_leader.set(1)
        self._metrics.scheduler_epoch.set(epoch)
        log.info("scheduler_leader", replica=self._replica, epoch=epoch)

    def lose(self, reason: str) -> None:
        """Stop leading now; the lock goes with the connection, which is dropped."""
        epoch, self.epoch = self.epoch, None
        conn, self._conn = self._conn, None
        if epoch is not None:
            log.warning(
                "scheduler_leadership_lost", replica=self._replica, epoch=epoch, reason=reason
            )
            self._metrics.scheduler_leader.set(0)
            self._metrics.scheduler_epoch.set(0)
            self._metrics.leadership_lost.labels(reason.split("_", maxsplit=1)[0]).inc()
        if conn is not None and not conn.is_closed():
            conn.terminate()  # frees the lock if PostgreSQL still holds it for us

    async def close(self) -> None:
        """Give leadership up on shutdown (closing the connection releases the lock)."""
        conn, self._conn = self._conn, None
        if self.epoch is not None:
            self.epoch = None
            self._metrics.scheduler_leader.set(0)
            self._metrics.scheduler_epoch.set(0)
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(OSError, asyncpg.InterfaceError, TimeoutError):
                async with asyncio.timeout(self._timeout):
                    await conn.close()
            if not conn.is_closed():
                conn.terminate()
