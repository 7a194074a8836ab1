"""The change log that drives the hub: one row and one NOTIFY per changing transaction."""

from __future__ import annotations

from kmsd.db import Conn

CHANNEL = "kmsd_changes"
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
    """Record that ``path``'s subtree changed; NOTIFY fires when the transaction commits."""
    change_id: int = await conn.fetchval(INSERT_CHANGE, path)
    await conn.execute(NOTIFY, CHANNEL, str(change_id))
    return change_id
