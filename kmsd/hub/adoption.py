"""Adoption reports: the latest per (path, instance) in memory, flushed to PostgreSQL in batches.

Every poll reports what its instance holds. Writing each report would turn the poll rate into
a write rate; instead the buffer keeps only the latest report per (path, instance) and one
statement per flush interval upserts them all (``unnest`` over arrays), whatever the poll rate.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

import asyncpg
import orjson
import structlog

from kmsd.metrics import Metrics

log = structlog.get_logger(__name__)

FLUSH = """
INSERT INTO adoption (path, instance_id, principal, ip, app_process_ids, held, processes,
                      versions, path_version, replica, last_seen, role)
SELECT r.path, r.instance_id, r.principal, r.ip,
       ARRAY(SELECT jsonb_array_elements_text(r.pids)), r.held, r.processes, r.versions,
       r.path_version, $11, r.last_seen, r.role
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[],
            $7::jsonb[], $8::jsonb[], $9::bigint[], $10::timestamptz[], $12::text[])
     AS r(path, instance_id, principal, ip, pids, held, processes, versions, path_version,
          last_seen, role)
ON CONFLICT (path, instance_id) DO UPDATE
SET principal = EXCLUDED.principal, ip = EXCLUDED.ip, role = EXCLUDED.role,
    app_process_ids = EXCLUDED.app_process_ids, held = EXCLUDED.held,
    processes = EXCLUDED.processes, versions = EXCLUDED.versions,
    path_version = EXCLUDED.path_version, replica = EXCLUDED.replica,
    last_seen = EXCLUDED.last_seen
WHERE adoption.last_seen <= EXCLUDED.last_seen
  -- An instance's slot belongs to the principal that first reported it: another one with read
  -- on the path cannot speak for it, live or stale (it could otherwise claim a version is held
  -- and open a rotation gate). Forgetting the instance (an operator's call) frees the slot.
  AND adoption.principal = EXCLUDED.principal
"""
ROWS_OF_PATH = """
SELECT instance_id, principal, ip, app_process_ids, held::text AS held,
       processes::text AS processes, versions::text AS versions, path_version, replica,
       last_seen, role
FROM adoption WHERE path = $1 ORDER BY instance_id
"""
FORGET = "DELETE FROM adoption WHERE path = $1 AND instance_id = $2 RETURNING instance_id"
# Reports older than this are forgotten entirely (stale ones are shown long before).
FORGET_AFTER: Final = timedelta(days=7)
PRUNE = "DELETE FROM adoption WHERE last_seen < now() - $1::interval"


@dataclass(frozen=True, slots=True)
class Report:
    path: str
    instance_id: str
    principal: str
    ip: str
    app_process_ids: tuple[str, ...]
    held: dict[str, str]
    path_version: int
    seen_at: datetime
    processes: dict[str, dict[str, str]] = field(default_factory=dict)
    versions: dict[str, list[str]] = field(default_factory=dict)
    role: str = "serving"


class AdoptionBuffer:
    """The latest unflushed report per (path, instance)."""

    def __init__(self, pool: asyncpg.Pool, replica: str, metrics: Metrics) -> None:
        self._pool = pool
        self._replica = replica
        self._metrics = metrics
        # Keyed by principal too: a report by another principal under the same instance id
        # must not replace the owner's before the database decides whose slot it is.
        self._pending: dict[tuple[str, str, str], Report] = {}

    def report(self, report: Report) -> None:
        self._pending[(report.path, report.instance_id, report.principal)] = report

    def forget(self, path: str, instance_id: str) -> None:
        """Drop unflushed reports of an instance (an operator forgot it)."""
        for key in [k for k in self._pending if k[:2] == (path, instance_id)]:
            del self._pending[key]

    async def flush(self) -> int:
        """Write every pending report in one statement; return how many."""
        if not self._pending:
            return 0
        batch, self._pending = list(self._pending.values()), {}
        try:
            for round_ in _rounds(batch):
                await self._write(round_)
        except asyncpg.DataError:
            # One report PostgreSQL cannot store must not hold up everyone's: write them one
            # by one and drop only those it refuses.
            return await self._write_each(batch)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Keep what failed unless a newer report arrived meanwhile; retry next round.
            for r in batch:
                self._pending.setdefault((r.path, r.instance_id, r.principal), r)
            log.warning("adoption_flush_failed", error=type(exc).__name__, pending=len(batch))
            return 0
        self._metrics.adoption_flush_size.observe(len(batch))
        return len(batch)

    async def _write_each(self, batch: list[Report]) -> int:
        written = 0
        for r in batch:
            try:
                await self._write([r])
                written += 1
            except asyncpg.DataError as exc:
                log.warning(
                    "adoption_report_dropped",
                    path=r.path,
                    instance_id=r.instance_id,
                    error=type(exc).__name__,
                )
        return written

    async def _write(self, batch: list[Report]) -> None:
        await self._pool.execute(
            FLUSH,
            [r.path for r in batch],
            [r.instance_id for r in batch],
            [r.principal for r in batch],
            [r.ip for r in batch],
            [orjson.dumps(list(r.app_process_ids)).decode() for r in batch],
            [orjson.dumps(r.held).decode() for r in batch],
            [orjson.dumps(r.processes).decode() for r in batch],
            [orjson.dumps(r.versions).decode() for r in batch],
            [r.path_version for r in batch],
            [r.seen_at for r in batch],
            self._replica,
            [r.role for r in batch],
        )

    async def run(self, interval: float) -> None:
        """Flush every ``interval`` seconds until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(interval)
                await self.flush()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())


def _rounds(batch: list[Report]) -> list[list[Report]]:
    """Split ``batch`` so no statement upserts one (path, instance) twice (PostgreSQL refuses)."""
    rounds: list[list[Report]] = []
    seen: list[set[tuple[str, str]]] = []
    for r in batch:
        key = (r.path, r.instance_id)
        for i, keys in enumerate(seen):
            if key not in keys:
                keys.add(key)
                rounds[i].append(r)
                break
        else:
            seen.append({key})
            rounds.append([r])
    return rounds
