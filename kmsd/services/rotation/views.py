"""Reading rotations: one described whole (gate progress, versions, history), or a list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from kmsd.db import rotations as rotations_db
from kmsd.db import store
from kmsd.errors import NotFound
from kmsd.services.rotation.common import rotation_of
from kmsd.services.rotation.gates import Gates


class Views:
    def __init__(self, pool: asyncpg.Pool, gates: Gates) -> None:
        self.pool = pool
        self.gates = gates

    async def row(self, rotation_id: int) -> asyncpg.Record:
        row = await self.pool.fetchrow(rotations_db.BY_ID, rotation_id)
        if row is None:
            raise NotFound(f"rotation {rotation_id} does not exist")
        return row

    async def describe(self, rotation_id: int) -> dict[str, Any]:
        """The rotation, its versions, its gate's progress and its history (no values)."""
        row = await self.row(rotation_id)
        rot = rotation_of(row)
        gate = await self.gates.gate(row, rot)
        versions = await self.pool.fetch(rotations_db.VERSIONS, row["secret_id"])
        events = await self.pool.fetch(rotations_db.EVENTS, rotation_id)
        return {
            **summary(row),
            "gate": gate.as_dict() if gate else None,
            "stale_after_s": int(self.gates.stale_after.total_seconds()),
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
