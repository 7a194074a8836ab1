"""Writes in doubt, for on-call: list them, retry a quarantined one, or discard it.

The reconciler resolves every write left in doubt by itself (``kmsd.services.reconcile``). A
write that keeps failing for a reason of its own is quarantined: kept with its attempts and the
name of its last error, and skipped. Only a person decides about those: ``retry`` puts one back
in the reconciler's hands (after the cause is fixed), ``discard`` drops it - the version, if SM
has it, never becomes current, and the label sweep moves SM's labels back to PostgreSQL's.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from kmsd.db import hold
from kmsd.domain.access import ROOT
from kmsd.domain.inputs import parse_id
from kmsd.errors import Conflict, NotFound
from kmsd.http.access import authorize, may
from kmsd.http.common import AUDIT_TARGET, flag, json_response
from kmsd.keys import POOL
from kmsd.services import writes
from kmsd.services.reconcile import QUARANTINE_AFTER

_COLUMNS = """
SELECT id, seq, op, sm_name, version_id, intent->>'path' AS path, intent->>'name' AS name,
       created_at, attempts, last_error, (op = 'put' AND attempts >= $1) AS quarantined
FROM sm_outbox
"""
LIST = _COLUMNS + "WHERE $2 OR (op = 'put' AND attempts >= $1) ORDER BY id LIMIT 1000"
ONE = _COLUMNS + "WHERE id = $2"
RETRY = "UPDATE sm_outbox SET attempts = 0, last_error = NULL WHERE id = $1"
DISCARD = "DELETE FROM sm_outbox WHERE id = $1"


def _doc(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "seq": row["seq"],
        "op": row["op"],
        "path": row["path"],
        "name": row["name"],
        "sm_name": row["sm_name"],
        "version_id": row["version_id"],
        "created_at": row["created_at"].isoformat(),
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "quarantined": row["quarantined"],
    }


def _scope(row: asyncpg.Record) -> str:
    """The path that decides who sees a row: its secret's node (deletions carry none)."""
    return row["path"] or ROOT


async def list_outbox(request: web.Request) -> web.Response:
    """``GET /v1/outbox[?quarantined=true]``: the writes in doubt the caller may view."""
    everything = not flag(request, "quarantined")
    request[AUDIT_TARGET] = ROOT
    rows = await request.app[POOL].fetch(LIST, QUARANTINE_AFTER, everything)
    visible = [_doc(r) for r in rows if await may(request, "view", _scope(r))]
    return json_response({"writes": visible, "quarantine_after": QUARANTINE_AFTER})


async def _quarantined(request: web.Request) -> asyncpg.Record:
    """The row named in the URL, once the caller may act on it (else 404, as if missing)."""
    row_id = parse_id(request.match_info["id"])
    pool = request.app[POOL]
    row: asyncpg.Record | None = None
    if row_id is not None:
        row = await pool.fetchrow(ONE, QUARANTINE_AFTER, row_id)
    request[AUDIT_TARGET] = f"outbox {request.match_info['id'][:40]}"
    if row is not None:
        # What it is about first, so `audit list --path` finds it; then which write.
        about = f"{row['path']}/{row['name']}" if row["path"] else row["sm_name"]
        request[AUDIT_TARGET] = f"{about} outbox {row['id']}"
        if not await may(request, "view", _scope(row)):
            row = None  # what the caller cannot view is not there, to the caller
    if row is None:
        raise NotFound(f"no write in doubt {request.match_info['id'][:40]!r}")
    await authorize(request, "admin", _scope(row))
    if not row["quarantined"]:
        raise Conflict(
            "this write is not quarantined: the reconciler resolves it by itself "
            "(docs/writes.md); only quarantined writes are retried or discarded by hand"
        )
    return row


async def retry(request: web.Request) -> web.Response:
    """``POST /v1/outbox/{id}/retry``: the reconciler takes a quarantined write up again."""
    row = await _quarantined(request)
    await request.app[POOL].execute(RETRY, row["id"])
    return json_response({"id": row["id"], "retried": True})


async def discard(request: web.Request) -> web.Response:
    """``DELETE /v1/outbox/{id}``: drop a quarantined write; it never becomes current."""
    row = await _quarantined(request)
    async with hold(request.app[POOL]) as conn:
        # The secret's lock: no write or reconcile pass of this secret is half-way through.
        if not await conn.fetchval(writes.TRY_LOCK, row["sm_name"]):
            raise Conflict("a write of this secret is in progress; try again in a moment")
        try:
            await conn.execute(DISCARD, row["id"])
        finally:
            await writes.unlock(conn, row["sm_name"])
    return json_response({"id": row["id"], "discarded": True})


def setup_outbox_routes(app: web.Application) -> None:
    app.router.add_get("/v1/outbox", list_outbox)
    app.router.add_post("/v1/outbox/{id}/retry", retry)
    app.router.add_delete("/v1/outbox/{id}", discard)
