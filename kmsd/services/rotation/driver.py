"""The rotation driver: on the scheduler's leader only, one pass per rotation tick.

Each pass finishes SM labels a transition left pending, notes gate timeouts, and advances auto
rotations whose gate is met (or a leaked secret's first gate that timed out). Every change it
makes carries the leader's epoch (``kmsd.services.leadership``): a deposed leader's step is
refused by the database and ends its leadership. Webhook deliveries ride along, fenced too.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp
import asyncpg
import structlog

from kmsd.clock import Clock
from kmsd.db import rotations as rotations_db
from kmsd.domain import rotation as machine
from kmsd.domain.access import IpNetwork
from kmsd.errors import Conflict, FencedOut, KmsError
from kmsd.metrics import Metrics
from kmsd.services import webhooks
from kmsd.services.leadership import check_fence
from kmsd.services.rotation.commands import Commands
from kmsd.services.rotation.common import DRIVER, rotation_of
from kmsd.services.rotation.gates import Gates
from kmsd.services.rotation.labels import RotationLabels
from kmsd.services.webhook_keys import WebhookKeys

log = structlog.get_logger(__name__)

_TIMED_OUT = """
UPDATE rotations SET timed_out = true
WHERE id = $1 AND NOT timed_out AND phase = $2 AND phase_since = $3
RETURNING id
"""


class Driver:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        commands: Commands,
        gates: Gates,
        labels: RotationLabels,
        *,
        http: aiohttp.ClientSession | None,
        webhook_allowed: Sequence[IpNetwork],
        webhook_keys: WebhookKeys | None,
        metrics: Metrics | None,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.commands = commands
        self.gates = gates
        self.labels = labels
        self.http = http
        self.webhook_allowed = webhook_allowed
        self.webhook_keys = webhook_keys
        self.metrics = metrics
        self.ticks = 0
        # Counted during a pass, for /metrics: (phase, state) -> rotations, stragglers.
        self._seen: dict[tuple[str, str], int] = {}
        self._waiting = 0

    async def tick(self, epoch: int | None = None) -> int:
        """One pass (leader only, ``epoch`` its fencing token); return the transitions made.

        Raises FencedOut when another replica has taken over.
        """
        moved = 0
        self._seen = {}
        self._waiting = 0
        for row in await self.pool.fetch(rotations_db.TO_DRIVE):
            try:
                moved += await self._drive(row, epoch)
            except FencedOut:
                raise
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
        if self.http is not None and self.webhook_keys is not None:
            try:
                await webhooks.deliver_due(
                    self.pool, self.http, self.webhook_allowed, epoch, keys=self.webhook_keys
                )
            except FencedOut:
                raise
            except (asyncpg.PostgresError, OSError) as exc:
                log.error("webhook_delivery_error", error=repr(exc))
        self.ticks += 1
        return moved

    async def _drive(self, row: asyncpg.Record, epoch: int | None) -> int:
        if row["labels_pending"]:
            await self.labels.sync(row["id"])
        rot = rotation_of(row)
        if not rot.active:
            return 0
        now = self.clock.now()
        gate = await self.gates.gate(row, rot)
        state = "paused" if rot.paused else "timed_out" if row["timed_out"] else "waiting"
        self._seen[(rot.phase, state)] = self._seen.get((rot.phase, state), 0) + 1
        self._waiting += len(gate.waiting) if gate else 0
        if rot.timed_out(now) and not row["timed_out"]:
            async with self.pool.acquire() as conn, conn.transaction():
                await check_fence(conn, epoch)
                if await conn.fetchval(_TIMED_OUT, row["id"], row["phase"], row["phase_since"]):
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
        await self.commands.apply(rot, transition, DRIVER, detail, fence=epoch)
        return 1
