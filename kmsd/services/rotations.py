"""The rotation service: start, operator commands, gates from adoption, and the driver.

The state machine is pure (``kmsd.domain.rotation``); this module loads its inputs and applies
its answers:

- a transition is one PostgreSQL transaction: the rotation row (locked, and checked to be in
  the phase the decision was made for), the versions' stages, an event (and its webhook
  deliveries), and a change on the secret's node and every referencing node, so every agent
  concerned wakes;
- SM's staging labels follow right after, from the stages now recorded (``next_label_op``:
  AWSCURRENT only ever moves). Until they are in place the row says ``labels_pending`` and the
  driver finishes them, after a crash too;
- the driver runs on the scheduler's leader only (one replica at a time; another takes over when
  it dies) and advances auto rotations whose gate is met, notes gate timeouts, and promotes a
  leaked secret whose first gate timed out. Operators' commands run on any replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
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
from kmsd.domain.access import IpNetwork
from kmsd.domain.audit import AuditEntry
from kmsd.domain.names import NodePath
from kmsd.domain.profile import Profile
from kmsd.errors import Conflict, InvalidInput, KmsError, NotFound, Unavailable
from kmsd.hub.hub import Hub
from kmsd.metrics import Metrics
from kmsd.services import webhooks, writes
from kmsd.services.keygen import generate

log = structlog.get_logger(__name__)

DRIVER = "kmsd"  # the actor of automatic steps
MAX_LABEL_STEPS = 8
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
_LABELS_DONE = "UPDATE rotations SET labels_pending = false WHERE id = $1"
_TIMED_OUT = """
UPDATE rotations SET timed_out = true
WHERE id = $1 AND NOT timed_out AND phase = $2 AND phase_since = $3
"""
# The patterns come from store.below_pattern (backslash escapes: LIKE's default).
_ADOPTION_UNDER = """
SELECT path, instance_id, ip, held::text AS held, versions::text AS versions,
       processes::text AS processes, last_seen
FROM adoption WHERE path = ANY($1::text[]) OR path LIKE ANY($2::text[])
"""
_REFERENCING_NODES = (
    "SELECT n.path FROM refs r JOIN nodes n ON n.id = r.node_id WHERE r.secret_id = $1"
)


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


def rotation_of(row: asyncpg.Record) -> machine.Rotation:
    return machine.Rotation(
        id=row["id"],
        phase=row["phase"],
        mode=row["mode"],
        paused=row["paused"],
        leaked=row["leaked"],
        gate_timeout=timedelta(seconds=row["gate_timeout_s"]),
        old_version=row["old_version"],
        new_version=row["new_version"],
        phase_since=row["phase_since"],
    )


@dataclass(frozen=True, slots=True)
class StartRequest:
    path: NodePath
    name: str
    value: str | bytes | None  # None: generate by the secret's stored spec
    mode: str
    gate_timeout: timedelta
    leaked: bool
    started_by: str

    def __repr__(self) -> str:  # never the value
        return f"StartRequest({self.path}/{self.name}, mode={self.mode}, leaked={self.leaked})"


class Rotations:
    """Everything rotations need: the pool, SM, the hub's snapshots, the clock, the window."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        sm: SecretsWriter,
        hub: Hub,
        clock: Clock,
        profile: Profile,
        *,
        sm_prefix: str,
        stale_after: timedelta,
        http: aiohttp.ClientSession | None = None,
        audit: AuditWriter | None = None,
        replica: str = "",
        webhook_allowed: Sequence[IpNetwork] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self.pool = pool
        self.sm = sm
        self.hub = hub
        self.clock = clock
        self.profile = profile
        self.sm_prefix = sm_prefix
        self.stale_after = stale_after
        self.http = http
        self.audit = audit
        self.replica = replica
        self.webhook_allowed = webhook_allowed
        self.metrics = metrics
        self.ticks = 0
        # Counted during a driver pass, for /metrics: (phase, state) -> rotations, stragglers.
        self._seen: dict[tuple[str, str], int] = {}
        self._waiting = 0

    # -- start -----------------------------------------------------------------------------

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
        return await self.describe(int(rotation_id))

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

    # -- commands --------------------------------------------------------------------------

    async def act(self, rotation_id: int, verb: str, *, force: bool, actor: str) -> dict[str, Any]:
        """An operator's command: decide on the current state, apply, describe."""
        row = await self._row(rotation_id)
        rot = rotation_of(row)
        gate = await self.gate(row, rot) if verb == "advance" and rot.active else None
        transition = machine.command(rot, verb, gate=gate, now=self.clock.now(), force=force)
        detail: dict[str, Any] = {}
        if transition.forced and gate is not None:
            detail = {
                "gate": gate.number,
                "waiting": [i.instance_id for i in gate.waiting],
                "stale": [i.instance_id for i in gate.stale],
            }
        await self.apply(rot, transition, actor, detail)
        return await self.describe(rotation_id)

    async def apply(
        self,
        expected: machine.Rotation,
        transition: machine.Transition,
        actor: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Apply ``transition`` if the rotation is still as ``expected``; then SM's labels.

        The transition is in the audit trail before it happens (fail closed: no row, no step),
        whoever takes it: an operator's command or the driver.
        """
        new = transition.rotation
        try:
            await self._audit(expected, transition, actor, "attempt")
        except AuditUnavailable:
            raise Unavailable(
                "the audit trail cannot be written, so the rotation does not move (fail closed)"
            ) from None
        async with self.pool.acquire() as conn, conn.transaction():
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
            await self.sync_labels(expected.id)

    async def _audit(
        self, rot: machine.Rotation, transition: machine.Transition, actor: str, outcome: str
    ) -> None:
        """One audit row of a transition: ``attempt`` before it, then what happened."""
        if self.audit is None:
            return
        row = await self._row(rot.id)
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

    async def sync_labels(self, rotation_id: int) -> bool:
        """Bring SM's staging labels in line with the recorded stages; True when they are."""
        row = await self._row(rotation_id)
        async with self.pool.acquire() as conn:
            # Serialised with writes and transitions of the same secret (one advisory lock key):
            # no transition can commit between reading the stages and clearing labels_pending.
            sm_name = row["sm_name"]
            await conn.execute(writes.LOCK, sm_name)
            try:
                stages = {
                    r["version_id"]: r["stage"]
                    for r in await conn.fetch(rotations_db.VERSIONS, row["secret_id"])
                }
                desired = machine.desired_labels(stages)
                for _ in range(MAX_LABEL_STEPS):
                    op = machine.next_label_op(await self.sm.labels(row["sm_arn"]), desired)
                    if op is None:
                        await conn.execute(_LABELS_DONE, rotation_id)
                        return True
                    await self.sm.move_label(
                        row["sm_arn"], op.label, to=op.move_to, away_from=op.remove_from
                    )
            except KmsError as exc:
                log.warning("rotation_labels_deferred", rotation_id=rotation_id, error=exc.detail)
                return False
            finally:
                await conn.execute(writes.UNLOCK, sm_name)
        log.error("rotation_labels_not_converging", rotation_id=rotation_id)
        return False

    # -- gates -----------------------------------------------------------------------------

    async def instances(self, row: asyncpg.Record) -> list[machine.Instance]:
        """Every (instance, path) whose effective set holds this secret, from adoption."""
        roots = [
            row["path"],
            *[r["path"] for r in await self.pool.fetch(_REFERENCING_NODES, row["secret_id"])],
        ]
        patterns = [store.below_pattern(p) for p in roots]
        reports = await self.pool.fetch(_ADOPTION_UNDER, roots, patterns)
        names: dict[str, tuple[str, str] | None] = {}
        out = []
        for r in reports:
            if r["path"] not in names:
                names[r["path"]] = await self._entry_at(r["path"], row["sm_arn"])
            entry = names[r["path"]]
            if entry is None:
                continue  # overridden there, or the node is gone
            name, role = entry
            held = orjson.loads(r["held"])
            versions = orjson.loads(r["versions"]).get(name) or []
            current = held.get(name)
            processes = {
                pid: reads[name]
                for pid, reads in orjson.loads(r["processes"]).items()
                if name in reads
            }
            out.append(
                machine.Instance(
                    instance_id=r["instance_id"],
                    path=r["path"],
                    role=role,
                    name=name,
                    current=current,
                    holding=frozenset([*versions, *([current] if current else [])]),
                    last_seen=r["last_seen"],
                    ip=r["ip"],
                    processes=processes,
                )
            )
        return out

    async def _entry_at(self, path: str, sm_arn: str) -> tuple[str, str] | None:
        """(local name, owner|referencer) of the secret in ``path``'s effective set."""
        snap = await self.hub.snapshot(NodePath.parse(path))
        if snap is None:
            return None
        for entry in orjson.loads(snap.body)["secrets"]:
            if entry.get("sm_arn") == sm_arn:
                return entry["name"], "referencer" if entry.get("via") else "owner"
        return None

    async def gate(
        self, row: asyncpg.Record, rot: machine.Rotation | None = None
    ) -> machine.GateStatus | None:
        rot = rot or rotation_of(row)
        if not rot.active:
            return None
        return machine.gate_status(
            rot, await self.instances(row), now=self.clock.now(), stale_after=self.stale_after
        )

    # -- the driver ------------------------------------------------------------------------

    async def tick(self) -> int:
        """One pass of the driver (leader only): labels to finish, gates to check."""
        moved = 0
        self._seen = {}
        self._waiting = 0
        for row in await self.pool.fetch(rotations_db.TO_DRIVE):
            try:
                moved += await self._drive(row)
            except Conflict:
                continue  # an operator acted meanwhile: next tick sees the new state
            except KmsError as exc:
                log.warning("rotation_drive_failed", rotation_id=row["id"], error=exc.detail)
            except (asyncpg.PostgresError, OSError, ValueError, KeyError) as exc:
                # One broken rotation must not stop the others (nor the webhooks below).
                log.error("rotation_drive_error", rotation_id=row["id"], error=repr(exc))
        if self.metrics is not None:
            self.metrics.rotations.clear()
            for (phase, state), count in self._seen.items():
                self.metrics.rotations.labels(phase, state).set(count)
            self.metrics.rotation_stragglers.set(self._waiting)
        if self.http is not None:
            try:
                await webhooks.deliver_due(self.pool, self.http, self.webhook_allowed)
            except (asyncpg.PostgresError, OSError) as exc:
                log.error("webhook_delivery_error", error=repr(exc))
        self.ticks += 1
        return moved

    async def _drive(self, row: asyncpg.Record) -> int:
        if row["labels_pending"]:
            await self.sync_labels(row["id"])
        rot = rotation_of(row)
        if not rot.active:
            return 0
        now = self.clock.now()
        gate = await self.gate(row, rot)
        state = "paused" if rot.paused else "timed_out" if row["timed_out"] else "waiting"
        self._seen[(rot.phase, state)] = self._seen.get((rot.phase, state), 0) + 1
        self._waiting += len(gate.waiting) if gate else 0
        if rot.timed_out(now) and not row["timed_out"]:
            async with self.pool.acquire() as conn, conn.transaction():
                if await conn.fetchval(
                    _TIMED_OUT + " RETURNING id", row["id"], row["phase"], row["phase_since"]
                ):
                    await rotations_db.record_event(
                        conn,
                        row,
                        "gate_timeout",
                        rot.phase,
                        DRIVER,
                        detail={
                            "gate": rot.gate,
                            "waiting": [i.instance_id for i in gate.waiting] if gate else [],
                        },
                    )
        transition = machine.tick(rot, gate, now)
        if transition is None:
            return 0
        detail = {}
        if transition.forced and gate is not None:
            detail = {"waiting": [i.instance_id for i in gate.waiting]}
        await self.apply(rot, transition, DRIVER, detail)
        return 1

    # -- reading ---------------------------------------------------------------------------

    async def _row(self, rotation_id: int) -> asyncpg.Record:
        row = await self.pool.fetchrow(rotations_db.BY_ID, rotation_id)
        if row is None:
            raise NotFound(f"rotation {rotation_id} does not exist")
        return row

    async def describe(self, rotation_id: int) -> dict[str, Any]:
        """The rotation, its versions, its gate's progress and its history (no values)."""
        row = await self._row(rotation_id)
        rot = rotation_of(row)
        gate = await self.gate(row, rot)
        versions = await self.pool.fetch(rotations_db.VERSIONS, row["secret_id"])
        events = await self.pool.fetch(rotations_db.EVENTS, rotation_id)
        return {
            **summary(row),
            "gate": gate.as_dict() if gate else None,
            "stale_after_s": int(self.stale_after.total_seconds()),
            "versions": [
                {
                    "version_id": v["version_id"],
                    "stage": v["stage"],
                    "created_at": v["created_at"].isoformat(),
                    "role": "new"
                    if v["version_id"] == row["new_version"]
                    else "old"
                    if v["version_id"] == row["old_version"]
                    else None,
                }
                for v in versions
                if v["version_id"] in (row["new_version"], row["old_version"])
                or v["stage"] in ("current", "pending", "previous")
            ],
            "events": [
                {
                    "id": e["id"],
                    "action": e["action"],
                    "phase": e["phase"],
                    "actor": e["actor"],
                    "forced": e["forced"],
                    "detail": orjson.loads(e["detail"]),
                    "at": e["at"].isoformat(),
                }
                for e in events
            ],
        }

    async def list(
        self, path: str | None, *, active_only: bool, limit: int = 100
    ) -> Sequence[dict[str, Any]]:
        pattern = store.below_pattern(path) if path else None
        rows = await self.pool.fetch(rotations_db.LIST, path, pattern, active_only, limit)
        return [summary(r) for r in rows]


def summary(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "path": row["path"],
        "name": row["name"],
        "phase": row["phase"],
        "gate": {"pending": 1, "promoted": 2}.get(row["phase"]),
        "mode": row["mode"],
        "paused": row["paused"],
        "leaked": row["leaked"],
        "gate_timeout_s": row["gate_timeout_s"],
        "timed_out": row["timed_out"],
        "labels_pending": row["labels_pending"],
        "old_version": row["old_version"],
        "new_version": row["new_version"],
        "started_by": row["started_by"],
        "started_at": row["started_at"].isoformat(),
        "phase_since": row["phase_since"].isoformat(),
        "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
    }
