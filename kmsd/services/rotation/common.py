"""What the rotation service's parts share: the request to start one, and rows as machines."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from kmsd.domain import rotation as machine
from kmsd.domain.names import NodePath

DRIVER = "kmsd"  # the actor of automatic steps


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
