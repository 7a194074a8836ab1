"""asyncpg access: the migrations runner and the queries, as named constants."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeAlias

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

log = structlog.get_logger(__name__)

# A connection taken directly or from the pool: queries accept either.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

# A database that went away: the connection died (InterfaceError), the server refused or closed
# it (PostgresError), the socket failed, or a wait ran out.
DB_LOST = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@asynccontextmanager
async def hold(pool: asyncpg.Pool) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
    """A pooled connection whose release never masks what the body raised or returned.

    Releasing a connection that died resets it, fails, drops it and re-raises: after a write
    that reached SM that would replace "reached SM, will reconcile" by a bare connection error.
    """
    conn = await pool.acquire()
    try:
        yield conn
    finally:
        try:
            await pool.release(conn)
        except DB_LOST as exc:
            log.warning("connection_dropped_on_release", error=type(exc).__name__)
