"""Rotation gates: which instances hold what a rotation's gate waits for, from adoption.

Only *serving* instances count (agents that hold values); observers such as ``kmsctl watch``
are never waited for. Each instance is found from the adoption reports of the secret's node
and everything below it, and of every node referencing it, under the local name that path's
effective set gives the secret (a path where it is overridden does not hold it at all).
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import orjson

from kmsd.clock import Clock
from kmsd.db import store
from kmsd.domain import rotation as machine
from kmsd.domain.names import NodePath
from kmsd.hub.hub import Hub
from kmsd.services.rotation.common import rotation_of

# The patterns come from store.below_pattern (backslash escapes: LIKE's default).
_ADOPTION_UNDER = """
SELECT path, instance_id, ip, held::text AS held, versions::text AS versions,
       processes::text AS processes, last_seen
FROM adoption
WHERE role = 'serving' AND (path = ANY($1::text[]) OR path LIKE ANY($2::text[]))
"""
_REFERENCING_NODES = (
    "SELECT n.path FROM refs r JOIN nodes n ON n.id = r.node_id WHERE r.secret_id = $1"
)


class Gates:
    """Gate progress of rotations, from the adoption reports and the hub's snapshots."""

    def __init__(
        self, pool: asyncpg.Pool, hub: Hub, clock: Clock, *, stale_after: timedelta
    ) -> None:
        self.pool = pool
        self.hub = hub
        self.clock = clock
        self.stale_after = stale_after

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
