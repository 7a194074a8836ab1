"""Rotation rows, their events and the webhook outbox (SQL and small helpers).

Shared by the write path (a rotation starts in the transaction that records its pending
version) and the rotation service (``kmsd.services.rotation``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from kmsd.db import Conn

ACTIVE_FOR_SECRET = """
SELECT id FROM rotations WHERE secret_id = $1 AND phase IN ('pending', 'promoted')
"""
INSERT_ROTATION = """
INSERT INTO rotations (secret_id, phase, mode, leaked, gate_timeout_s, old_version, new_version,
                       phase_since, started_by, secret_before, secret_after)
VALUES ($1, 'pending', $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10::jsonb)
RETURNING id
"""
SELECT_ROTATION = """
SELECT r.id, r.secret_id, r.phase, r.mode, r.paused, r.leaked, r.gate_timeout_s,
       r.old_version, r.new_version, r.labels_pending, r.timed_out, r.phase_since,
       r.started_by, r.started_at, r.finished_at,
       r.secret_before::text AS secret_before, r.secret_after::text AS secret_after,
       s.name, s.kind, s.sm_arn, s.sm_name, s.node_id, n.path
FROM rotations r JOIN secrets s ON s.id = r.secret_id JOIN nodes n ON n.id = s.node_id
"""
BY_ID = SELECT_ROTATION + " WHERE r.id = $1"
BY_ID_FOR_UPDATE = BY_ID + " FOR UPDATE OF r"
TO_DRIVE = (
    SELECT_ROTATION
    + """
WHERE r.phase IN ('pending', 'promoted') OR r.labels_pending ORDER BY r.id LIMIT 200
"""
)
LIST = (
    SELECT_ROTATION
    + """
WHERE ($1::text IS NULL OR n.path = $1 OR n.path LIKE $2 ESCAPE '\\')
  AND (NOT $3 OR r.phase IN ('pending', 'promoted'))
ORDER BY r.id DESC LIMIT $4
"""
)
EVENTS = """
SELECT id, action, phase, actor, forced, detail::text AS detail, at
FROM rotation_events WHERE rotation_id = $1 ORDER BY id
"""
VERSIONS = """
SELECT version_id, stage, created_at FROM secret_versions WHERE secret_id = $1
ORDER BY created_at, version_id
"""
INSERT_EVENT = """
INSERT INTO rotation_events (rotation_id, action, phase, actor, forced, detail)
VALUES ($1, $2, $3, $4, $5, $6::jsonb)
RETURNING id, at
"""
# Applications that must hear about a rotation of a secret: its owner and every application
# referencing it, each once, if it has a webhook.
WEBHOOK_TARGETS = """
SELECT w.app_path, t.local_name FROM webhooks w JOIN (
    SELECT split_part(n.path, '/', 1) || '/' || split_part(n.path, '/', 2) AS app_path,
           NULL::text AS local_name
    FROM secrets s JOIN nodes n ON n.id = s.node_id WHERE s.id = $1
    UNION
    SELECT split_part(n.path, '/', 1) || '/' || split_part(n.path, '/', 2), r.local_name
    FROM refs r JOIN nodes n ON n.id = r.node_id WHERE r.secret_id = $1
) t ON t.app_path = w.app_path
"""
INSERT_DELIVERY = """
INSERT INTO webhook_deliveries (app_path, event_id, payload) VALUES ($1, $2, $3::jsonb)
"""


async def record_event(
    conn: Conn,
    rotation: Any,
    action: str,
    phase: str,
    actor: str,
    *,
    forced: bool = False,
    detail: dict[str, Any] | None = None,
) -> int:
    """Append a rotation event and queue it for every interested application's webhook.

    ``rotation`` is a row of SELECT_ROTATION (or anything with the same keys).
    """
    body = orjson.dumps(detail or {}).decode()
    event = await conn.fetchrow(INSERT_EVENT, rotation["id"], action, phase, actor, forced, body)
    assert event is not None  # INSERT ... RETURNING
    for target in await conn.fetch(WEBHOOK_TARGETS, rotation["secret_id"]):
        payload = {
            "event_id": event["id"],
            "rotation_id": rotation["id"],
            "action": action,
            "phase": phase,
            "forced": forced,
            "actor": actor,
            "at": _iso(event["at"]),
            "app": target["app_path"],
            "secret": {"path": rotation["path"], "name": rotation["name"]},
            "local_name": target["local_name"],
            "old_version": rotation["old_version"],
            "new_version": rotation["new_version"],
            "detail": detail or {},
        }
        await conn.execute(
            INSERT_DELIVERY, target["app_path"], event["id"], orjson.dumps(payload).decode()
        )
    return int(event["id"])


def _iso(at: datetime) -> str:
    return at.isoformat()
