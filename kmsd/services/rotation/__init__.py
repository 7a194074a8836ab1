"""The rotation service: commands, gates, labels and the driver, wired together.

The state machine is pure (``kmsd.domain.rotation``); this module loads its inputs and applies
its answers:

- a transition is one PostgreSQL transaction: the rotation row (locked, and checked to be in
  the phase the decision was made for), the versions' stages, an event (and its webhook
  deliveries), and a change on the secret's node and every referencing node, so every agent
  concerned wakes;
- SM's staging labels follow right after, from the stages now recorded (``next_label_op``:
  AWSCURRENT only ever moves). Until they are in place the row says ``labels_pending`` and the
  driver finishes them, after a crash too;
- the driver runs on the scheduler's leader only (one replica at a time, fenced by its epoch;
  another takes over when it dies) and advances auto rotations whose gate is met, notes gate
  timeouts, and promotes a leaked secret whose first gate timed out. Operators' commands run on
  any replica.

Parts: ``commands`` (start, act, apply), ``gates`` (who holds what, serving instances only),
``labels`` (SM labels after a transition), ``driver`` (the leader's pass), ``views`` (reading).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg

from kmsd.aws.sm import SecretsWriter
from kmsd.clock import Clock
from kmsd.db.audit import AuditWriter
from kmsd.domain.access import IpNetwork
from kmsd.domain.profile import Profile
from kmsd.hub.hub import Hub
from kmsd.metrics import Metrics
from kmsd.services.rotation.commands import Commands
from kmsd.services.rotation.common import DRIVER, StartRequest, rotation_of
from kmsd.services.rotation.driver import Driver
from kmsd.services.rotation.gates import Gates
from kmsd.services.rotation.labels import RotationLabels
from kmsd.services.rotation.views import Views, summary
from kmsd.services.webhook_keys import WebhookKeys

__all__ = ["DRIVER", "Rotations", "StartRequest", "rotation_of", "summary"]


class Rotations:
    """The rotation service's parts over one pool, SM, the hub's snapshots and a clock."""

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
        webhook_keys: WebhookKeys | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.gates = Gates(pool, hub, clock, stale_after=stale_after)
        self.labels = RotationLabels(pool, sm)
        self.views = Views(pool, self.gates)
        self.commands = Commands(
            pool,
            sm,
            clock,
            profile,
            gates=self.gates,
            labels=self.labels,
            views=self.views,
            sm_prefix=sm_prefix,
            audit=audit,
            replica=replica,
            metrics=metrics,
        )
        self.driver = Driver(
            pool,
            clock,
            self.commands,
            self.gates,
            self.labels,
            http=http,
            webhook_allowed=webhook_allowed,
            webhook_keys=webhook_keys,
            metrics=metrics,
        )

    async def start(self, req: StartRequest) -> dict[str, Any]:
        """Add the new version as pending; the rotation row is recorded with it."""
        return await self.commands.start(req)

    async def act(self, rotation_id: int, verb: str, *, force: bool, actor: str) -> dict[str, Any]:
        """An operator's command: decide on the current state, apply, describe."""
        return await self.commands.act(rotation_id, verb, force=force, actor=actor)

    async def describe(self, rotation_id: int) -> dict[str, Any]:
        return await self.views.describe(rotation_id)

    async def list(
        self, path: str | None, *, active_only: bool, limit: int = 100
    ) -> Sequence[dict[str, Any]]:
        return await self.views.list(path, active_only=active_only, limit=limit)

    async def tick(self, epoch: int | None = None) -> int:
        """One pass of the driver (see ``Driver.tick``)."""
        return await self.driver.tick(epoch)

    @property
    def ticks(self) -> int:
        return self.driver.ticks
