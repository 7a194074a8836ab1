"""Rotation commands: start one, and apply transitions (an operator's or the driver's).

A transition is one PostgreSQL transaction: the rotation row (locked, and checked to be in the
phase the decision was made for), the versions' stages, an event (and its webhook deliveries),
and a change on the secret's node and every referencing node, so every agent concerned wakes.
SM's labels follow right after (``RotationLabels``). Every transition is audited as an attempt
before it happens and with its outcome after.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson
import structlog

from kmsd.aws.sm import SecretsWriter
from kmsd.clock import Clock
from kmsd.db import Conn, store
from kmsd.db import rotations as rotations_db
from kmsd.db.audit import AuditUnavailable, AuditWriter
from kmsd.db.changes import record_secret_change
from kmsd.domain import rotation as machine
from kmsd.domain.audit import AuditEntry
from kmsd.domain.profile import Profile
from kmsd.errors import Conflict, InvalidInput, NotFound, Unavailable
from kmsd.metrics import Metrics
from kmsd.services import writes
from kmsd.services.keygen import generate
from kmsd.services.leadership import check_fence
from kmsd.services.rotation.common import StartRequest, rotation_of
from kmsd.services.rotation.gates import Gates
from kmsd.services.rotation.labels import RotationLabels
from kmsd.services.rotation.views import Views

log = structlog.get_logger(__name__)
# Stages are written demotions first, so the one-live-stage-per-secret index always holds.
_STAGE_ORDER = {"revoked": 0, "deprecated": 0, "previous": 1, "pending": 2, "current": 3}
_SET_STAGE = "UPDATE secret_versions SET stage = $3 WHERE secret_id = $1 AND version_id = $2"
_RETIRE_OTHER_PREVIOUS = """
UPDATE secret_versions SET stage = 'deprecated'
WHERE secret_id = $1 AND stage = 'previous' AND version_id <> $2
"""
_RETIRE_OTHER_REVOKED = """
UPDATE secret_versions SET stage = 'deprecated'
WHERE secret_id = $1 AND stage = 'revoked' AND version_id <> ALL($2::text[])
"""
_SECRET_META = """
UPDATE secrets SET expires_at = $2, spec = $3::jsonb, public_key = $4, updated_at = now()
WHERE id = $1
"""
_XACT_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
_UPDATE_ROTATION = """
UPDATE rotations SET phase = $2, paused = $3, phase_since = $4,
       labels_pending = labels_pending OR $5, timed_out = timed_out AND NOT $6,
       finished_at = CASE WHEN $2 IN ('done', 'aborted', 'rolled_back') THEN $4::timestamptz END
WHERE id = $1
"""

_CURRENT_SEQ = "UPDATE secrets SET current_seq = nextval('write_seq') WHERE id = $1"


async def _check_rollback(conn: Conn, row: asyncpg.Record) -> None:
    """A rollback restores the old version only over the rotation's own new one."""
    stages = {
        r["version_id"]: r["stage"]
        for r in await conn.fetch(rotations_db.VERSIONS, row["secret_id"])
    }
    other = await conn.fetchval(rotations_db.ACTIVE_FOR_SECRET, row["secret_id"])
    if (
        (other is not None and other != row["id"])
        or stages.get(row["new_version"]) != "current"
        or stages.get(row["old_version"]) not in ("previous", "revoked")
    ):
        raise Conflict(
            f"rotation {row['id']} can no longer be rolled back: the secret has changed since "
            "(a newer version or another rotation); start a new rotation to go back"
        )


class Commands:
    def __init__(
        self,
        pool: asyncpg.Pool,
        sm: SecretsWriter,
        clock: Clock,
        profile: Profile,
        *,
        gates: Gates,
        labels: RotationLabels,
        views: Views,
        sm_prefix: str,
        audit: AuditWriter | None,
        replica: str,
        metrics: Metrics | None,
    ) -> None:
        self.pool = pool
        self.sm = sm
        self.clock = clock
        self.profile = profile
        self.gates = gates
        self.labels = labels
        self.views = views
        self.sm_prefix = sm_prefix
        self.audit = audit
        self.replica = replica
        self.metrics = metrics

    async def start(self, req: StartRequest) -> dict[str, Any]:
        """Add the new version as pending; the rotation row is recorded with it."""
        if req.mode not in machine.MODES:
            raise InvalidInput(f"mode must be one of {', '.join(machine.MODES)}")
        async with self.pool.acquire() as conn:
            node = await store.get_node(conn, req.path)
            secret = await store.get_secret(conn, node["id"], req.name)
        if secret is None:
            raise NotFound(f"secret {req.name!r} does not exist at {str(req.path)!r}")
        if secret["kind"] == "datakey":
            raise InvalidInput(
                "data keys are renewed by period (kmsctl datakey create), not rotated: old "
                "data needs the old keys"
            )
        now = self.clock.now()
        value, spec, public_key, expires_at = await self._new_value(req, secret, now)
        put = writes.PutRequest(
            path=req.path,
            name=req.name,
            kind=secret["kind"],
            value=value,
            created_by=req.started_by,
            expires_at=expires_at,
            spec=spec,
            public_key=public_key,
            stage="pending",
            rotation={
                # A reconciled start is recorded only if the secret has not moved on since.
                "expected_current": await self.pool.fetchval(
                    "SELECT version_id FROM secret_versions WHERE secret_id = $1"
                    " AND stage = 'current'",
                    secret["id"],
                ),
                "mode": req.mode,
                "leaked": req.leaked,
                "gate_timeout_s": int(req.gate_timeout.total_seconds()),
                "started_at": now.isoformat(),
            },
        )
        del value
        result = await writes.put_secret(self.pool, self.sm, self.sm_prefix, put)
        rotation_id = await self.pool.fetchval(
            "SELECT id FROM rotations WHERE new_version = $1", result["version_id"]
        )
        if rotation_id is None:
            raise Conflict(
                f"{req.name!r} changed while the rotation started (deleted, or rotated by "
                "someone else); look again"
            )
        log.info(
            "rotation_started",
            rotation_id=rotation_id,
            path=str(req.path),
            name=req.name,
            mode=req.mode,
            leaked=req.leaked,
        )
        return await self.views.describe(int(rotation_id))

    async def _new_value(
        self, req: StartRequest, secret: asyncpg.Record, now: datetime
    ) -> tuple[str | bytes, dict[str, Any] | None, str | None, datetime | None]:
        if req.value is not None:
            if (secret["kind"] == "binary") != isinstance(req.value, bytes):
                raise InvalidInput(
                    f"{req.name!r} is a {secret['kind']} secret; give a value of that kind"
                )
            lifetime = timedelta(days=self.profile.hand_made_lifetime_days)
            return req.value, None, None, now + lifetime
        if secret["spec"] is None:
            raise InvalidInput(
                f"{req.name!r} was not generated by kmsd, so there is no spec to generate its "
                "next version from; give the new value instead"
            )
        old = orjson.loads(secret["spec"])
        spec = self.profile.check(old["use"], old["algorithm"], old["size"], old["lifetime_days"])
        key = await asyncio.get_running_loop().run_in_executor(None, generate, spec, now)
        value = orjson.dumps(key.document, option=orjson.OPT_SORT_KEYS).decode()
        return value, spec.as_dict(), key.public_key_pem, now + timedelta(days=spec.lifetime_days)

    async def act(self, rotation_id: int, verb: str, *, force: bool, actor: str) -> dict[str, Any]:
        """An operator's command: decide on the current state, apply, describe."""
        row = await self.views.row(rotation_id)
        rot = rotation_of(row)
        gate = await self.gates.gate(row, rot) if verb == "advance" and rot.active else None
        transition = machine.command(rot, verb, gate=gate, now=self.clock.now(), force=force)
        detail: dict[str, Any] = {}
        if transition.forced and gate is not None:
            detail = {
                "gate": gate.number,
                "waiting": [i.instance_id for i in gate.waiting],
                "stale": [i.instance_id for i in gate.stale],
            }
        await self.apply(rot, transition, actor, detail)
        return await self.views.describe(rotation_id)

    async def apply(
        self,
        expected: machine.Rotation,
        transition: machine.Transition,
        actor: str,
        detail: dict[str, Any] | None = None,
        *,
        fence: int | None = None,
    ) -> None:
        """Apply ``transition`` if the rotation is still as ``expected``; then SM's labels.

        The transition is in the audit trail before it happens (fail closed: no row, no step),
        whoever takes it: an operator's command or the driver. The driver passes its leadership
        epoch as ``fence``: a deposed leader's step is refused (FencedOut), not applied.
        """
        new = transition.rotation
        try:
            await self._audit(expected, transition, actor, "attempt")
        except AuditUnavailable:
            raise Unavailable(
                "the audit trail cannot be written, so the rotation does not move (fail closed)"
            ) from None
        async with self.pool.acquire() as conn, conn.transaction():
            await check_fence(conn, fence)
            row = await conn.fetchrow(rotations_db.BY_ID_FOR_UPDATE, expected.id)
            if row is None:
                raise NotFound(f"rotation {expected.id} does not exist")
            if (row["phase"], row["paused"]) != (expected.phase, expected.paused):
                raise Conflict(
                    f"rotation {expected.id} changed meanwhile (now {row['phase']}"
                    f"{', paused' if row['paused'] else ''}); look again and retry"
                )
            if transition.moves_versions:
                # Serialised with puts and label syncs of this secret (the same lock key).
                await conn.execute(_XACT_LOCK, row["sm_name"])
                if transition.action == "rollback":
                    await _check_rollback(conn, row)
            await self._set_stages(conn, row, transition)
            await conn.execute(
                _UPDATE_ROTATION,
                expected.id,
                new.phase,
                new.paused,
                new.phase_since,
                transition.moves_versions,
                transition.action != "pause",  # a pause does not restart the gate's clock
            )
            await rotations_db.record_event(
                conn,
                row,
                transition.action,
                new.phase,
                actor,
                forced=transition.forced,
                detail={
                    **(detail or {}),
                    **({"reason": transition.reason} if transition.reason else {}),
                },
            )
            if transition.moves_versions:
                await record_secret_change(conn, row["path"], row["node_id"], row["secret_id"])
        try:
            await self._audit(
                expected, transition, actor, "forced" if transition.forced else "allowed"
            )
        except AuditUnavailable:
            # It happened (its attempt row says so); the outcome row could not follow.
            log.error("rotation_outcome_not_audited", rotation_id=expected.id)
        if self.metrics is not None:
            self.metrics.rotation_transitions.labels(
                transition.action, str(transition.forced).lower()
            ).inc()
        log.info(
            "rotation_transition",
            rotation_id=expected.id,
            action=transition.action,
            phase=new.phase,
            actor=actor,
            forced=transition.forced,
        )
        if transition.moves_versions:
            await self.labels.sync(expected.id)

    async def _audit(
        self, rot: machine.Rotation, transition: machine.Transition, actor: str, outcome: str
    ) -> None:
        """One audit row of a transition: ``attempt`` before it, then what happened."""
        if self.audit is None:
            return
        row = await self.views.row(rot.id)
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        await self.audit.write(
            AuditEntry(
                at=self.clock.now(),
                request_id=str(request_id or f"rotation-{rot.id}-{transition.action}"),
                replica=self.replica,
                principal=actor,
                claimed="",
                source_ip="",
                action=f"rotation.{transition.action}",
                target=f"{row['path']}/{row['name']} rotation {rot.id}",
                outcome=outcome,
                status=0 if outcome == "attempt" else 200,
            )
        )

    async def _set_stages(
        self, conn: Conn, row: asyncpg.Record, transition: machine.Transition
    ) -> None:
        if transition.action == "promote":
            # The version before the old one loses its "previous" (SM drops its label too).
            await conn.execute(_RETIRE_OTHER_PREVIOUS, row["secret_id"], row["old_version"])
        if "revoked" in transition.stages.values():
            # SM puts a label on one version only: the latest revoked version keeps
            # KMSD_REVOKED (rollback needs it); older revoked ones become deprecated.
            await conn.execute(_RETIRE_OTHER_REVOKED, row["secret_id"], list(transition.stages))
        for version_id, stage in sorted(
            transition.stages.items(), key=lambda item: _STAGE_ORDER[item[1]]
        ):
            await conn.execute(_SET_STAGE, row["secret_id"], version_id, stage)
        if "current" in transition.stages.values():
            # A step that makes a version current outranks every write begun before it: an
            # intent resolved late must not override it (kmsd.domain.writes).
            await conn.execute(_CURRENT_SEQ, row["secret_id"])
        # The secret's expiry, spec and public key follow its current version.
        meta = {"promote": row["secret_after"], "rollback": row["secret_before"]}.get(
            transition.action
        )
        if meta is not None:
            doc = orjson.loads(meta)
            await conn.execute(
                _SECRET_META,
                row["secret_id"],
                datetime.fromisoformat(doc["expires_at"]) if doc.get("expires_at") else None,
                orjson.dumps(doc["spec"]).decode() if doc.get("spec") else None,
                doc.get("public_key"),
            )
