"""The change log that drives the hub: one row and one NOTIFY per changing transaction."""

from __future__ import annotations

from kmsd.db import Conn

CHANNEL = "kmsd_changes"
# Arbitrary, fixed: "kmsc" in ASCII. Serialises change-log inserts (see record_change).
CHANGES_LOCK_KEY = 0x6B6D7363
LOCK = "SELECT pg_advisory_xact_lock($1)"
BUMP_NODE = "UPDATE nodes SET changed_seq = nextval('kmsd_change_seq') WHERE id = $1"
INSERT_CHANGE = "INSERT INTO changes (path) VALUES ($1) RETURNING id"
NOTIFY = "SELECT pg_notify($1, $2)"
CHANGES_AFTER = """
SELECT id, path, committed_at FROM changes WHERE id > $1 ORDER BY id LIMIT $2
"""
LAST_CHANGE = "SELECT coalesce(max(id), 0) FROM changes"
# Changes are kept long enough for any replica to catch up after a LISTEN reconnect; a replica
# that fell further behind re-checks every path it watches instead.
PRUNE = "DELETE FROM changes WHERE committed_at < now() - interval '1 hour'"


async def record_change(conn: Conn, path: str, node_id: int | None = None) -> int:
    """Record that ``path``'s subtree changed (bumping ``node_id``'s change number first).

    NOTIFY fires when the caller's transaction commits. Sequence values and identity values
    are handed out when taken, not at COMMIT: without the lock, a transaction that took change
    id 10 (or change number 5) could commit after one that took 11 (or 6), and a replica that
    had already read up to 11 - or a path whose version already reads 6 - would never see the
    earlier change. Taking the transaction-scoped lock *before* the node's number is drawn
    makes both commit in order. It is the last step of every changing transaction, and commits
    that NOTIFY serialise on a global lock in PostgreSQL anyway.
    """
    await conn.execute(LOCK, CHANGES_LOCK_KEY)
    if node_id is not None:
        await conn.execute(BUMP_NODE, node_id)
    change_id: int = await conn.fetchval(INSERT_CHANGE, path)
    await conn.execute(NOTIFY, CHANNEL, str(change_id))
    return change_id


REFERENCERS = """
SELECT n.id, n.path FROM refs r JOIN nodes n ON n.id = r.node_id WHERE r.secret_id = $1
"""


async def record_secret_change(conn: Conn, path: str, node_id: int, secret_id: int) -> None:
    """Record a change to one secret: its own node, and every node that references it."""
    await record_change(conn, path, node_id)
    for ref in await conn.fetch(REFERENCERS, secret_id):
        await record_change(conn, ref["path"], ref["id"])
