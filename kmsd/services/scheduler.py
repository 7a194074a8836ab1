"""The rotation scheduler: one leader at a time renews generated secrets and data keys.

Leadership is fenced (``kmsd.services.leadership``): a session advisory lock on a dedicated
connection, checked every loop, and an epoch that every leader-only change presents to the
database. Every replica tries for it each loop; when the leader dies or loses its connection,
another replica takes over within a tick, and the old one's late changes are refused.

Each tick the leader rotates what expires within the lead time and can rotate itself -
generated secrets (their spec is stored; the current profile must still allow it) and KMS data
keys (a new key per period) - by adding a version, which moves ``expires_at`` forward. Before
rotating it claims (secret, expiry) in ``scheduled_rotations``, so a leader change mid-rotation
cannot rotate the same secret twice for one expiry; a claim left by a dead leader is taken over
after CLAIM_STALE. Hand-made secrets cannot rotate themselves: they are counted on /metrics and
listed by ``GET /v1/expiring``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import asyncpg
import orjson
import structlog

from kmsd.aws.sm import SecretsWriter
from kmsd.clock import Clock
from kmsd.domain.names import NodePath
from kmsd.domain.profile import Profile
from kmsd.errors import FencedOut, InvalidInput, KmsError
from kmsd.metrics import Metrics
from kmsd.services import datakeys, writes
from kmsd.services.keygen import generate
from kmsd.services.leadership import Leadership, check_fence

if TYPE_CHECKING:
    from kmsd.services.rotation import Rotations

log = structlog.get_logger(__name__)

CLAIM_STALE: Final = timedelta(minutes=10)
SCHEDULER: Final = "kmsd:scheduler"
DUE = """
SELECT s.id, s.name, n.path, s.kind, s.spec::text AS spec, s.cmk_arn, s.period_days,
       s.expires_at
FROM secrets s JOIN nodes n ON n.id = s.node_id
WHERE (s.spec IS NOT NULL OR s.kind = 'datakey')
  -- Due within the lead time, but never earlier than half-way through the key's life: a
  -- lifetime shorter than the lead must not make every tick rotate again.
  AND $1 >= s.expires_at - LEAST($2::interval, (s.expires_at - s.updated_at) / 2)
ORDER BY s.expires_at LIMIT 100
"""
CLAIM = """
INSERT INTO scheduled_rotations (secret_id, for_expiry, claimed_by) VALUES ($1, $2, $3)
ON CONFLICT (secret_id, for_expiry) DO UPDATE
SET claimed_by = EXCLUDED.claimed_by, claimed_at = now()
WHERE NOT scheduled_rotations.done AND scheduled_rotations.claimed_at < now() - $4::interval
RETURNING secret_id
"""
DONE = "UPDATE scheduled_rotations SET done = true WHERE secret_id = $1 AND for_expiry = $2"
RELEASE = "DELETE FROM scheduled_rotations WHERE secret_id = $1 AND for_expiry = $2"
EXPIRING_HAND_MADE = """
SELECT n.path, s.name, s.kind, s.expires_at FROM secrets s JOIN nodes n ON n.id = s.node_id
WHERE s.spec IS NULL AND s.kind <> 'datakey' AND s.expires_at < $1
ORDER BY s.expires_at
"""


@dataclass
class Scheduler:
    leadership: Leadership
    pool: asyncpg.Pool
    sm: SecretsWriter
    kms: Any
    profile: Profile
    clock: Clock
    metrics: Metrics
    sm_prefix: str
    replica: str
    lead: timedelta = timedelta(days=14)
    tick_s: float = 5.0
    report_window: timedelta = timedelta(days=30)
    rotations: int = 0
    ticks: int = 0
    # Operator rotations (kmsd.services.rotation) are driven by the leader too, more often.
    driver: Rotations | None = None
    driver_tick_s: float = 1.0

    @property
    def leader(self) -> bool:
        return self.leadership.leader

    async def run(self) -> None:
        """Check leadership every loop; while leader, rotate what is due and drive rotations."""
        renew_at = 0.0
        try:
            while True:
                if await self.leadership.check():
                    try:
                        now = time.monotonic()
                        if now >= renew_at:
                            await self.tick()
                            renew_at = now + self.tick_s
                        if self.driver is not None:
                            await self.driver.tick(self.leadership.epoch)
                    except FencedOut:
                        self.leadership.lose("fenced")
                await asyncio.sleep(min(self.tick_s, self.driver_tick_s))
        finally:
            await self.leadership.close()

    async def tick(self) -> int:
        """Rotate everything due now; refresh the expiring gauge; return rotations done."""
        now = self.clock.now()
        done = 0
        for row in await self.pool.fetch(DUE, now, self.lead):
            if await self._rotate(row, now):
                done += 1
        hand_made = await self.pool.fetch(EXPIRING_HAND_MADE, now + self.report_window)
        self.metrics.expiring_hand_made.set(len(hand_made))
        self.rotations += done
        self.ticks += 1
        return done

    async def _rotate(self, row: asyncpg.Record, now: datetime) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            await check_fence(conn, self.leadership.epoch if self.leadership.leader else -1)
            claimed = await conn.fetchval(
                CLAIM, row["id"], row["expires_at"], self.replica, CLAIM_STALE
            )
        if claimed is None:
            return False  # rotated for this expiry already, or another leader is on it
        path = NodePath.parse(row["path"])
        try:
            if row["kind"] == "datakey":
                await datakeys.new_data_key(
                    self.pool,
                    self.kms,
                    path,
                    row["name"],
                    cmk=row["cmk_arn"],
                    period_days=row["period_days"],
                    created_by=SCHEDULER,
                    now=now,
                )
            else:
                await self._regenerate(path, row, now)
        except InvalidInput as exc:
            # The profile no longer allows this spec: renewing it would break the standard.
            # Leave it to an operator (it shows in the log every expiry, not every tick).
            await self.pool.execute(DONE, row["id"], row["expires_at"])
            log.error(
                "scheduled_rotation_refused", path=row["path"], name=row["name"], detail=exc.detail
            )
            return False
        except KmsError as exc:
            await self.pool.execute(RELEASE, row["id"], row["expires_at"])
            log.warning(
                "scheduled_rotation_failed",
                path=row["path"],
                name=row["name"],
                error=exc.code,
                detail=exc.detail,
            )
            return False
        await self.pool.execute(DONE, row["id"], row["expires_at"])
        log.info("scheduled_rotation", path=row["path"], name=row["name"], kind=row["kind"])
        return True

    async def _regenerate(self, path: NodePath, row: asyncpg.Record, now: datetime) -> None:
        old = orjson.loads(row["spec"])
        # The current profile decides: a spec it no longer allows is refused, not renewed.
        spec = self.profile.check(old["use"], old["algorithm"], old["size"], old["lifetime_days"])
        key = await asyncio.get_running_loop().run_in_executor(None, generate, spec, now)
        await writes.put_secret(
            self.pool,
            self.sm,
            self.sm_prefix,
            writes.PutRequest(
                path=path,
                name=row["name"],
                kind="json",
                value=orjson.dumps(key.document, option=orjson.OPT_SORT_KEYS).decode(),
                created_by=SCHEDULER,
                expires_at=now + timedelta(days=spec.lifetime_days),
                spec=spec.as_dict(),
                public_key=key.public_key_pem,
            ),
        )
