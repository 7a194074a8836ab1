"""The reconciler: writes left in doubt are resolved by asking SM, and SM's labels repaired.

Every replica runs ``reconcile`` each ``KMSD_RECONCILE_INTERVAL``: outbox intents older than
``KMSD_RECONCILE_MIN_AGE`` (longer than any write can still be in flight) are resolved under the
secret's lock - skipped when a write of that secret holds it - by the decision table of
``kmsd.domain.writes``: SM's versions and labels, and the number of the write that made
PostgreSQL's current version current, decide whether the version becomes current, is recorded
as superseded, or is dropped. After each resolution, once no other write of the secret is in
doubt, SM's labels are brought to PostgreSQL's stages (``kmsd.services.labels``).

The scheduler's leader also sweeps every SM-backed secret, a batch per pass, for a label
mismatch nobody caused through kmsd (a hand-made label move, a write that landed after it was
given up) and repairs it toward PostgreSQL, the last acknowledged write.

Each pass also makes sure a batch of secrets not yet checked carry the tags that hosts'
prefix-shaped IAM policies read (``kmsd.domain.iam.sm_tags``): kmsd writes them at creation, and
this once-per-secret check backfills secrets from before that, or created by an older replica
during a rolling upgrade. It lives here, not in ``kmsd migrate``: the migration runs with a
database role only, while the reconciler already holds kmsd's SM client and per-secret locks.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import orjson
import structlog

from kmsd.aws.sm import SecretsWriter
from kmsd.db import DB_LOST, Conn, hold, store
from kmsd.db import rotations as rotations_db
from kmsd.domain.iam import sm_tags
from kmsd.domain.names import NodePath
from kmsd.domain.writes import Intent, Recorded, Resolution, resolve
from kmsd.errors import KmsError
from kmsd.services import labels, writes

log = structlog.get_logger(__name__)

# A put that failed this many passes for a reason of its own (not SM being away) is
# quarantined: left out of later passes, counted on /metrics, kept for an operator.
QUARANTINE_AFTER = 5
_STALE_OUTBOX = """
SELECT id, seq, op, sm_name, version_id, intent::text AS intent FROM sm_outbox
WHERE created_at < now() - $1::interval AND NOT (op = 'put' AND attempts >= $2)
ORDER BY id LIMIT 100
"""
QUARANTINED = "SELECT count(*) FROM sm_outbox WHERE op = 'put' AND attempts >= $1"
_RECORDED = "SELECT id, current_seq FROM secrets WHERE sm_name = $1 FOR UPDATE"
_SUPERSEDED = """
INSERT INTO secret_versions (secret_id, version_id, stage, created_by)
VALUES ($1, $2, 'deprecated', $3)
ON CONFLICT (secret_id, version_id) DO NOTHING
"""
_SM_SECRET = "SELECT id, sm_arn FROM secrets WHERE sm_name = $1 AND kind <> 'datakey'"
_SWEEP_BATCH = """
SELECT id, sm_name FROM secrets WHERE kind <> 'datakey' AND id > $1 ORDER BY id LIMIT $2
"""
SWEEP_BATCH = 50
# Secrets whose SM tags are checked per pass: 10,000 old secrets are tagged in about an hour
# and a half at the default interval, without a burst of SM calls at upgrade time.
TAG_BATCH = 100
_UNTAGGED = """
SELECT s.id, s.sm_name, s.name, n.path FROM secrets s JOIN nodes n ON n.id = s.node_id
WHERE s.sm_tags_checked_at IS NULL AND s.kind <> 'datakey' ORDER BY s.id LIMIT $1
"""
_TAGS_CHECKED = "UPDATE secrets SET sm_tags_checked_at = now() WHERE id = $1"


async def reconcile(pool: asyncpg.Pool, sm: SecretsWriter, min_age: timedelta) -> dict[str, int]:
    """Resolve outbox rows older than ``min_age``; return counts by outcome."""
    counts = {r.value: 0 for r in Resolution} | {"deleted": 0, "skipped": 0, "labels": 0}
    for row in await pool.fetch(_STALE_OUTBOX, min_age, QUARANTINE_AFTER):
        if row["op"] == "delete":
            await writes.apply_delete(pool, sm, row["id"], row["sm_name"])
            counts["deleted"] += 1
            continue
        async with hold(pool) as conn:
            if not await conn.fetchval(writes.TRY_LOCK, row["sm_name"]):
                counts["skipped"] += 1  # a write to this secret is in flight
                continue
            try:
                outcome = await _resolve_one(conn, sm, row)
                if outcome is not None:
                    counts[outcome.value] += 1
                    if not await conn.fetchval(writes.PUT_IN_DOUBT, row["sm_name"]):
                        counts["labels"] += await repair_labels(conn, sm, row["sm_name"])
            except KmsError as exc:
                log.warning("reconcile_deferred", sm_name=row["sm_name"], error=exc.detail)
            except Exception as exc:
                # One row that cannot be resolved must not hold up the rows behind it; one
                # that keeps failing is quarantined (see QUARANTINE_AFTER).
                log.exception("reconcile_row_failed", outbox_id=row["id"])
                await _note_failure(pool, row["id"], type(exc).__name__)
            finally:
                await writes.unlock(conn, row["sm_name"])
    if any(counts.values()):
        log.info("outbox_reconciled", **counts)
    await backfill_tags(pool, sm)
    return counts


async def backfill_tags(pool: asyncpg.Pool, sm: SecretsWriter) -> int:
    """Tag one batch of unchecked secrets in SM as kmsd tags new ones; return how many lacked it.

    A secret SM no longer has is marked checked too (nothing to tag; its row is someone else's
    repair). An SM failure ends the pass: the rest wait for the next one.
    """
    tagged = 0
    for row in await pool.fetch(_UNTAGGED, TAG_BATCH):
        async with hold(pool) as conn:
            if not await conn.fetchval(writes.TRY_LOCK, row["sm_name"]):
                continue  # a write is on it; the next pass checks it
            try:
                done = await sm.ensure_tags(
                    row["sm_name"], sm_tags(NodePath.parse(row["path"]), row["name"])
                )
                await conn.execute(_TAGS_CHECKED, row["id"])
            except KmsError as exc:
                log.warning("tag_backfill_deferred", sm_name=row["sm_name"], error=exc.detail)
                break
            finally:
                await writes.unlock(conn, row["sm_name"])
        if done:
            tagged += 1
            log.info("sm_secret_tagged", sm_name=row["sm_name"])
        elif done is None:
            log.warning("tag_backfill_no_secret", sm_name=row["sm_name"])
    return tagged


async def _note_failure(pool: asyncpg.Pool, row_id: int, error: str) -> None:
    try:
        await pool.execute(writes.OUTBOX_FAILED, row_id, error)
    except DB_LOST as exc:
        log.warning("reconcile_failure_not_noted", outbox_id=row_id, error=type(exc).__name__)


async def _resolve_one(conn: Conn, sm: SecretsWriter, row: asyncpg.Record) -> Resolution | None:
    listing = await sm.versions(row["sm_name"])
    intent: dict[str, Any] = orjson.loads(row["intent"])
    async with conn.transaction():
        if not await conn.fetchval("SELECT 1 FROM sm_outbox WHERE id = $1 FOR UPDATE", row["id"]):
            return None  # resolved meanwhile (another replica, or the write itself)
        secret = await conn.fetchrow(_RECORDED, row["sm_name"])
        decision = resolve(
            Intent(row["version_id"], row["seq"], intent.get("stage", "current")),
            listing[1] if listing else None,
            Recorded(secret is not None, secret["current_seq"] if secret else 0),
        )
        if decision.resolution in (Resolution.CURRENT, Resolution.PENDING):
            assert listing is not None  # the table never records what SM lacks
            await writes.record(
                conn, row["id"], intent, listing[0], row["version_id"], seq=row["seq"]
            )
        else:
            await conn.execute(store.DELETE_OUTBOX, row["id"])
            if decision.resolution is Resolution.SUPERSEDED and secret is not None:
                await conn.execute(
                    _SUPERSEDED, secret["id"], row["version_id"], intent["created_by"]
                )
    log.info(
        "write_resolved",
        sm_name=row["sm_name"],
        version_id=row["version_id"],
        resolution=decision.resolution.value,
        reason=decision.reason,
    )
    return decision.resolution


async def repair_labels(conn: Conn, sm: SecretsWriter, sm_name: str) -> int:
    """Move SM's labels to the stages PostgreSQL records (caller holds the lock); return moves."""
    secret = await conn.fetchrow(_SM_SECRET, sm_name)
    if secret is None:
        return 0
    stages = {
        r["version_id"]: r["stage"] for r in await conn.fetch(rotations_db.VERSIONS, secret["id"])
    }
    moves = await labels.converge(sm, secret["sm_arn"], stages)
    if moves:
        log.warning("sm_labels_repaired", sm_name=sm_name, moves=moves)
    return moves or 0


async def sweep_labels(pool: asyncpg.Pool, sm: SecretsWriter, after: int) -> tuple[int, int]:
    """Check one batch of secrets after id ``after``; return (next cursor, moves made).

    The cursor wraps to 0 at the end of the table, so repeated calls cover every secret.
    """
    rows = await pool.fetch(_SWEEP_BATCH, after, SWEEP_BATCH)
    moves = 0
    for row in rows:
        async with hold(pool) as conn:
            if not await conn.fetchval(writes.TRY_LOCK, row["sm_name"]):
                continue  # a write or a rotation step is on it: it leaves the labels right
            try:
                if not await conn.fetchval(writes.PUT_IN_DOUBT, row["sm_name"]):
                    moves += await repair_labels(conn, sm, row["sm_name"])
            except KmsError as exc:
                log.warning("label_sweep_deferred", sm_name=row["sm_name"], error=exc.detail)
            finally:
                await writes.unlock(conn, row["sm_name"])
    return (rows[-1]["id"] if len(rows) == SWEEP_BATCH else 0), moves
