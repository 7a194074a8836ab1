"""The change log that drives the hub: one row and one NOTIFY per changing transaction."""

from __future__ import annotations

from kmsd.db import Conn

CHANNEL = "kmsd_changes"
# Arbitrary, fixed: "kmsc" in ASCII. Serialises change-log inserts (see record_change).
CHANGES_LOCK_KEY = 0x6B6D7363
LOCK = "SELECT pg_advisory_xact_lock($1)"
INSERT_CHANGE = "INSERT INTO changes (path) VALUES ($1) RETURNING id"
NOTIFY = "SELECT pg_notify($1, $2)"
CHANGES_AFTER = """
SELECT id, path, committed_at FROM changes WHERE id > $1 ORDER BY id LIMIT $2
"""
LAST_CHANGE = "SELECT coalesce(max(id), 0) FROM changes"
# Changes are kept long enough for any replica to catch up after a LISTEN reconnect; a replica
# that fell further behind re-checks every path it watches instead.
PRUNE = "DELETE FROM changes WHERE committed_at < now() - interval '1 hour'"


async def record_change(conn: Conn, path: str) -> int:
    """Record that ``path``'s subtree changed; NOTIFY fires when the transaction commits.

    Identity values are handed out at INSERT, not at COMMIT: without the lock, a transaction
    that took id 10 could commit after one that took id 11, and a replica that had already
    read up to 11 would never see 10. The transaction-scoped lock makes change ids commit in
    order (it is held for the rest of the transaction, which is its last step; commits that
    NOTIFY serialise on a global lock in PostgreSQL anyway).
    """
    await conn.execute(LOCK, CHANGES_LOCK_KEY)
    change_id: int = await conn.fetchval(INSERT_CHANGE, path)
    await conn.execute(NOTIFY, CHANNEL, str(change_id))
    return change_id
