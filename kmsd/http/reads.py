"""Reads the API and the console answer alike: a secret's metadata, a search of the trail.

The checks stay with each caller (the API refuses, the console may show a form instead); what
is read, and how, is one function each, so the console never drifts from the API's answers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import orjson

from kmsd.db import audit as audit_db
from kmsd.db import store
from kmsd.domain.audit import ChainedRow
from kmsd.domain.names import NodePath
from kmsd.errors import NotFound

# GET /v1/audit's query, with a cursor: rows older than a sequence number ($10, NULL for none).
AUDIT_PAGE = audit_db.SELECT_ROWS.replace(
    "ORDER BY seq DESC", "  AND ($10::bigint IS NULL OR seq < $10)\nORDER BY seq DESC"
)
if AUDIT_PAGE == audit_db.SELECT_ROWS:  # the cursor must never be silently dropped
    raise RuntimeError("the audit search query changed shape: its cursor needs care")


async def describe_secret(pool: asyncpg.Pool, path: NodePath, name: str) -> dict[str, Any]:
    """``GET /v1/secrets/PATH/NAME``'s answer: the secret's metadata and versions."""
    async with pool.acquire() as conn:
        node = await store.get_node(conn, path)
        row = await store.get_secret(conn, node["id"], name)
        if row is None:
            raise NotFound(f"secret {name!r} does not exist at {str(path)!r}")
        versions = await store.secret_versions(conn, row["id"])
    return {
        "path": str(path),
        "name": row["name"],
        "kind": row["kind"],
        "sm_arn": row["sm_arn"],
        "description": row["description"],
        "tags": orjson.loads(row["tags"]),
        "created_by": row["created_by"],
        "created_at": store.iso(row["created_at"]),
        "updated_at": store.iso(row["updated_at"]),
        "expires_at": store.iso(row["expires_at"]),
        "generated": orjson.loads(row["spec"]) if row["spec"] else None,
        "public_key_pem": row["public_key"],
        "cmk_arn": row["cmk_arn"],
        "period_days": row["period_days"],
        "versions": versions,
    }


async def search_audit(
    pool: asyncpg.Pool,
    *,
    principal: str | None,
    path: str | None,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
    outcome: str | None,
    limit: int,
    before: int | None = None,
) -> list[ChainedRow]:
    """Audit rows, newest first: ``path`` matches itself, below it, or something of it.

    ``before``: only rows older than that sequence number (the next page). ``None`` filters
    nothing.
    """
    below = store.below_pattern(path) if path else None
    records = await pool.fetch(
        AUDIT_PAGE,
        principal,
        path,
        action,
        since,
        until,
        outcome,
        limit,
        below,
        below[:-2] + " %" if below else None,
        before,
    )
    return [audit_db.row_of(r) for r in records]


def audit_doc(row: ChainedRow) -> dict[str, Any]:
    """An audit row as ``GET /v1/audit`` answers it."""
    e = row.entry
    return {
        "seq": row.seq,
        "at": e.at.isoformat(),
        "principal": e.principal,
        "claimed": e.claimed,
        "source_ip": e.source_ip,
        "action": e.action,
        "target": e.target,
        "outcome": e.outcome,
        "status": e.status,
        "request_id": e.request_id,
        "replica": e.replica,
        "hash": row.hash.hex(),
    }
