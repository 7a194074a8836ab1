"""Secret writes across Secrets Manager and PostgreSQL, and their reconciliation.

SM and PostgreSQL cannot share a transaction, so a put runs in three steps around an outbox
row (``sm_outbox``, metadata only):

1. commit an intent: the SM name and the new version id, which is also SM's
   ``ClientRequestToken`` (so the SM call is idempotent and its outcome can be looked up);
2. write the value to SM;
3. in one transaction, record the metadata, move the stages, bump the node's change number
   and delete the intent.

If step 2 is refused, the intent is deleted and the caller gets a 502: no metadata is left
behind. If its outcome is unknown, or kmsd dies or PostgreSQL fails between 2 and 3, the intent
survives and ``kmsd.services.reconcile`` resolves it later by asking SM, by the rules of
``kmsd.domain.writes`` (a late intent never overrides a later acknowledged write). Writes to
one secret are serialised by a session advisory lock that the reconciler also takes, so it
never races a write in flight.

Deletions go the other way: the metadata and a ``delete`` outbox row go in one transaction,
then SM is asked to schedule the deletion; rows that fail stay for the reconciler.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog

from kmsd.aws.sm import SecretsWriter
from kmsd.db import DB_LOST, Conn, hold, store
from kmsd.db import rotations as rotations_db
from kmsd.db.changes import record_change, record_secret_change
from kmsd.domain.iam import sm_tags
from kmsd.domain.names import NodePath
from kmsd.errors import Conflict, InvalidInput, KmsError, NotFound, Unavailable

log = structlog.get_logger(__name__)


LOCK = "SELECT pg_advisory_lock(hashtextextended($1, 0))"
TRY_LOCK = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))"
UNLOCK = "SELECT pg_advisory_unlock(hashtextextended($1, 0))"
_UPSERT_SECRET = """
INSERT INTO secrets (node_id, name, kind, sm_name, sm_arn, description, tags, created_by,
                     expires_at, spec, public_key)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10::jsonb, $11)
ON CONFLICT (node_id, name) DO UPDATE
SET sm_arn = EXCLUDED.sm_arn,
    description = COALESCE(NULLIF(EXCLUDED.description, ''), secrets.description),
    tags = CASE WHEN EXCLUDED.tags = '{}'::jsonb THEN secrets.tags ELSE EXCLUDED.tags END,
    expires_at = COALESCE(EXCLUDED.expires_at, secrets.expires_at),
    -- a hand-made value replaces a generated one entirely: no stale spec or public key
    spec = EXCLUDED.spec,
    public_key = EXCLUDED.public_key,
    updated_at = now()
RETURNING id
"""
# A manual put makes the new version current, as SM's PutSecretValue does with its labels:
# the old current becomes previous and the old previous loses its label (deprecated).
_RETIRE_PREVIOUS = (
    "UPDATE secret_versions SET stage = 'deprecated' WHERE secret_id = $1 AND stage = 'previous'"
)
_DEMOTE_CURRENT = (
    "UPDATE secret_versions SET stage = 'previous' WHERE secret_id = $1 AND stage = 'current'"
)
_INTENT = """
INSERT INTO sm_outbox (op, sm_name, version_id, intent) VALUES ('put', $1, $2, $3::jsonb)
RETURNING id, seq
"""
# The write (or rotation step) that made the current version current: a late intent with a
# lower number was overtaken (kmsd.domain.writes).
_CURRENT_SEQ = "UPDATE secrets SET current_seq = GREATEST(current_seq, $2) WHERE id = $1"
_INSERT_VERSION = """
INSERT INTO secret_versions (secret_id, version_id, stage, created_by)
VALUES ($1, $2, $3, $4)
ON CONFLICT (secret_id, version_id) DO NOTHING
"""
_CANCEL_PENDING_DELETE = "DELETE FROM sm_outbox WHERE op = 'delete' AND sm_name = $1"
_DELETE_STILL_WANTED = """
SELECT EXISTS (SELECT 1 FROM sm_outbox WHERE id = $1)
   AND NOT EXISTS (SELECT 1 FROM secrets WHERE sm_name = $2)
"""
PUT_IN_DOUBT = "SELECT 1 FROM sm_outbox WHERE op = 'put' AND sm_name = $1 LIMIT 1"
OUTBOX_FAILED = "UPDATE sm_outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1"


@dataclass(frozen=True, slots=True)
class PutRequest:
    path: NodePath
    name: str
    kind: str
    value: str | bytes = field(repr=False)  # never in a repr, log or traceback
    created_by: str
    description: str = ""
    tags: dict[str, str] | None = None
    expires_at: datetime | None = None
    spec: dict[str, Any] | None = None  # generated secrets: how they were made
    public_key: str | None = None
    # "pending": the first step of a rotation (SM label AWSPENDING, AWSCURRENT untouched);
    # ``rotation`` then carries the rotation's settings, recorded with the version.
    stage: str = "current"
    rotation: dict[str, Any] | None = None


def sm_name_for(prefix: str, path: NodePath, name: str) -> str:
    """The deterministic SM name of a secret: ``<prefix><path>/<name>``."""
    return f"{prefix}{path}/{name}"


async def put_secret(
    pool: asyncpg.Pool, sm: SecretsWriter, prefix: str, req: PutRequest
) -> dict[str, Any]:
    """Create or version a secret; return its metadata (never the value)."""
    sm_name = sm_name_for(prefix, req.path, req.name)
    version_id = str(uuid.uuid4())
    async with hold(pool) as conn:
        await conn.execute(LOCK, sm_name)
        try:
            async with conn.transaction():
                node = await store.get_node(conn, req.path)
                if node["depth"] < 2:
                    raise InvalidInput(
                        f"{str(req.path)!r} is a namespace; secrets attach to an application "
                        "or a node below it"
                    )
                existing = await store.get_secret(conn, node["id"], req.name)
                if await conn.fetchval(store.REF_ON_NODE, node["id"], req.name):
                    raise Conflict(
                        f"{str(req.path)!r} already has a reference named {req.name!r}; "
                        "remove it or put the secret on another node"
                    )
                if existing is not None and await conn.fetchval(
                    rotations_db.ACTIVE_FOR_SECRET, existing["id"]
                ):
                    raise Conflict(
                        f"secret {req.name!r} at {str(req.path)!r} is being rotated; finish, "
                        "abort or roll back that rotation first (kmsctl rotate status)"
                    )
                if req.stage == "pending" and (existing is None or existing["kind"] != req.kind):
                    raise InvalidInput("only an existing secret can be rotated")
                if req.stage == "pending" and await conn.fetchval(PUT_IN_DOUBT, sm_name):
                    raise Conflict(
                        f"an earlier write of {req.name!r} is still in doubt (kmsd reconciles "
                        "it within minutes); start the rotation after that"
                    )
                if existing is not None and existing["kind"] != req.kind:
                    raise Conflict(
                        f"secret {req.name!r} at {str(req.path)!r} is a {existing['kind']} "
                        f"secret; it cannot take a {req.kind} value"
                    )
                intent = _intent(req, sm_name)
                # A deletion still pending for this name must not land after this write.
                await conn.execute(_CANCEL_PENDING_DELETE, sm_name)
                outbox = await conn.fetchrow(
                    _INTENT, sm_name, version_id, orjson.dumps(intent).decode()
                )
                assert outbox is not None  # RETURNING of an INSERT
                outbox_id, seq = outbox["id"], outbox["seq"]
            try:
                result = await sm.write(
                    sm_name,
                    version_id,
                    req.value,
                    create=existing is None,
                    tags=sm_tags(req.path, req.name),
                    description=req.description,
                    stages=["AWSPENDING"] if req.stage == "pending" else None,
                )
            except KmsError as err:
                # A clear refusal leaves nothing behind. After an ambiguous failure (a 5xx, a
                # connection lost mid-request) SM may hold the version: the intent stays and
                # the reconciler asks SM by version id, as after a crash.
                if not err.extra.get("ambiguous"):
                    try:
                        await conn.execute(store.DELETE_OUTBOX, outbox_id)
                    except DB_LOST:
                        # The intent stays; the reconciler finds SM without it and drops it.
                        log.warning("put_intent_left", sm_name=sm_name)
                raise
            try:
                async with conn.transaction():
                    await record(conn, outbox_id, intent, result.arn, version_id, seq=seq)
            except DB_LOST as exc:
                log.error("put_metadata_failed", sm_name=sm_name, error=type(exc).__name__)
                raise Unavailable(
                    "the value reached Secrets Manager but its metadata could not be recorded; "
                    "kmsd will reconcile it within minutes (until then the previous version "
                    "stays current for agents)",
                    version_id=version_id,
                    reached_sm=True,
                ) from None
        finally:
            await unlock(conn, sm_name)
    log.info("secret_put", path=str(req.path), name=req.name, version_id=version_id)
    return {
        "path": str(req.path),
        "name": req.name,
        "kind": req.kind,
        "sm_arn": result.arn,
        "version_id": version_id,
        "created": existing is None,
    }


def _intent(req: PutRequest, sm_name: str) -> dict[str, Any]:
    return {
        "path": str(req.path),
        "name": req.name,
        "kind": req.kind,
        "sm_name": sm_name,
        "created_by": req.created_by,
        "description": req.description,
        "tags": req.tags or {},
        "expires_at": req.expires_at.isoformat() if req.expires_at else None,
        "spec": req.spec,
        "public_key": req.public_key,
        "stage": req.stage,
        "rotation": req.rotation,
    }


async def unlock(conn: Conn, sm_name: str) -> None:
    """Release the secret's lock; on a dead connection the lock died with its session.

    (A pooled connection that died is detached from its proxy: even ``is_closed()`` raises.)
    """
    try:
        if not conn.is_closed():
            await conn.execute(UNLOCK, sm_name)
    except DB_LOST as exc:
        log.warning("secret_unlock_failed", sm_name=sm_name, error=type(exc).__name__)


async def record(
    conn: Conn, outbox_id: int, intent: dict[str, Any], arn: str, version_id: str, *, seq: int
) -> bool:
    """Record a version SM holds as current, or pending for a rotation (step 3).

    Returns False if its node has gone meanwhile.
    """
    node = await conn.fetchrow(store.GET_NODE_FOR_UPDATE, intent["path"])
    await conn.execute(store.DELETE_OUTBOX, outbox_id)
    if node is None:
        # The node was deleted while the value was in flight: the SM secret is an orphan.
        await conn.execute(store.INSERT_OUTBOX, "delete", intent["sm_name"], None, "{}")
        return False
    if intent.get("stage", "current") == "pending":
        # A rotation's new version changes nothing of the secret until it is promoted: its
        # expiry, spec and public key wait in the rotation row (``after``).
        secret_id = await conn.fetchval(
            "SELECT id FROM secrets WHERE node_id = $1 AND name = $2", node["id"], intent["name"]
        )
        if secret_id is None:
            return False  # deleted while the value was in flight (its SM deletion is queued)
        await _record_pending(conn, intent, secret_id, version_id)
    else:
        expires = datetime.fromisoformat(intent["expires_at"]) if intent["expires_at"] else None
        secret_id = await conn.fetchval(
            _UPSERT_SECRET,
            node["id"],
            intent["name"],
            intent["kind"],
            intent["sm_name"],
            arn,
            intent["description"],
            orjson.dumps(intent["tags"]).decode(),
            intent["created_by"],
            expires,
            orjson.dumps(intent["spec"]).decode() if intent.get("spec") else None,
            intent.get("public_key"),
        )
        await conn.execute(_RETIRE_PREVIOUS, secret_id)
        await conn.execute(_DEMOTE_CURRENT, secret_id)
        await conn.execute(_INSERT_VERSION, secret_id, version_id, "current", intent["created_by"])
        await conn.execute(_CURRENT_SEQ, secret_id, seq)
    await record_secret_change(conn, intent["path"], node["id"], secret_id)
    return True


async def _record_pending(
    conn: Conn, intent: dict[str, Any], secret_id: int, version_id: str
) -> None:
    """A rotation's new version: stage pending, and the rotation row that will drive it.

    Returns quietly when the secret moved on since the start was attempted (another rotation
    under way, or a different current version): only a reconciled intent of a start that crashed
    can meet that (starts are serialised by the secret's lock and refused while a write is in
    doubt), and recording it would revive an abandoned value.
    """
    settings = intent.get("rotation") or {}
    old = await conn.fetchval(
        "SELECT version_id FROM secret_versions WHERE secret_id = $1 AND stage = 'current'",
        secret_id,
    )
    if await conn.fetchval(rotations_db.ACTIVE_FOR_SECRET, secret_id) or old != settings.get(
        "expected_current", old
    ):
        # The secret moved on since this start was attempted (another rotation, or a newer
        # current version): recording it now would revive an abandoned value.
        log.warning("pending_version_dropped", secret_id=secret_id, version_id=version_id)
        return
    await conn.execute(_INSERT_VERSION, secret_id, version_id, "pending", intent["created_by"])
    before = await conn.fetchrow(
        "SELECT expires_at, spec::text AS spec, public_key FROM secrets WHERE id = $1", secret_id
    )
    assert before is not None  # locked by the caller's transaction
    rotation_id = await conn.fetchval(
        rotations_db.INSERT_ROTATION,
        secret_id,
        settings.get("mode", "manual"),
        bool(settings.get("leaked", False)),
        int(settings.get("gate_timeout_s", 3600)),
        old,
        version_id,
        datetime.fromisoformat(settings["started_at"])
        if "started_at" in settings
        else datetime.now(UTC),
        intent["created_by"],
        orjson.dumps(
            {
                "expires_at": before["expires_at"].isoformat() if before["expires_at"] else None,
                "spec": orjson.loads(before["spec"]) if before["spec"] else None,
                "public_key": before["public_key"],
            }
        ).decode(),
        orjson.dumps(
            {
                "expires_at": intent["expires_at"],
                "spec": intent.get("spec"),
                "public_key": intent.get("public_key"),
            }
        ).decode(),
    )
    row = await conn.fetchrow(rotations_db.BY_ID, rotation_id)
    assert row is not None  # inserted just above, in this transaction
    await rotations_db.record_event(
        conn,
        row,
        "start",
        "pending",
        intent["created_by"],
        detail={"mode": row["mode"], "leaked": row["leaked"], "generated": bool(intent["spec"])},
    )


async def delete_secret(pool: asyncpg.Pool, sm: SecretsWriter, path: NodePath, name: str) -> None:
    """Remove a secret's metadata and schedule its SM deletion."""
    async with pool.acquire() as conn, conn.transaction():
        node = await store.get_node(conn, path, for_update=True)
        secret = await store.get_secret(conn, node["id"], name)
        if secret is None:
            raise NotFound(f"secret {name!r} does not exist at {str(path)!r}")
        if await conn.fetchval(store.IS_REFERENCED, secret["id"]):
            raise Conflict(
                f"secret {name!r} at {str(path)!r} is referenced by other applications; "
                "unshare it (with remove_refs) first"
            )
        await conn.execute(store.DELETE_SECRET, secret["id"])
        if secret["kind"] != "datakey":  # data keys live in PostgreSQL only
            await conn.execute(store.INSERT_OUTBOX, "delete", secret["sm_name"], None, "{}")
        await record_change(conn, str(path), node["id"])
    await drain_deletions(pool, sm)


async def delete_node(
    pool: asyncpg.Pool, sm: SecretsWriter, path: NodePath, *, recursive: bool
) -> list[str]:
    """Delete a node (recursively on request) and schedule its secrets' SM deletion."""
    async with pool.acquire() as conn, conn.transaction():
        sm_names = await store.delete_node(conn, path, recursive=recursive)
        await record_change(conn, str(path))
    if sm_names:
        await drain_deletions(pool, sm)
    return sm_names


async def drain_deletions(pool: asyncpg.Pool, sm: SecretsWriter) -> None:
    """Send pending SM deletions; failures stay in the outbox for the reconciler."""
    rows = await pool.fetch("SELECT id, sm_name FROM sm_outbox WHERE op = 'delete' ORDER BY id")
    for row in rows:
        await apply_delete(pool, sm, row["id"], row["sm_name"])


async def apply_delete(pool: asyncpg.Pool, sm: SecretsWriter, row_id: int, sm_name: str) -> None:
    """Carry out one pending SM deletion, under the secret's lock, unless it is stale.

    A deletion is stale when its row is gone (a later put cancelled it) or when the secret
    exists again in PostgreSQL: deleting in SM then would destroy the re-created secret.
    """
    async with hold(pool) as conn:
        await conn.execute(LOCK, sm_name)
        try:
            if not await conn.fetchval(_DELETE_STILL_WANTED, row_id, sm_name):
                await conn.execute(store.DELETE_OUTBOX, row_id)
                return
            try:
                await sm.delete(sm_name)
            except KmsError as exc:
                await conn.execute(OUTBOX_FAILED, row_id, exc.detail)
                log.warning("sm_delete_deferred", sm_name=sm_name, error=exc.code)
                return
            await conn.execute(store.DELETE_OUTBOX, row_id)
        finally:
            await conn.execute(UNLOCK, sm_name)
