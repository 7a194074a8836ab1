"""Adoption reports: the latest per (path, instance) in memory, flushed to PostgreSQL in batches.

Every poll reports what its instance holds. Writing each report would turn the poll rate into
a write rate; instead the buffer keeps only the latest report per (path, instance) and one
statement per flush interval upserts them all (``unnest`` over arrays), whatever the poll rate.

A poll whose reports did not change carries only their digest (``kmsd.domain.watch``). Before
it is held, :meth:`AdoptionBuffer.holds` checks that kmsd has those very reports: in this
replica's buffer (not flushed yet), else in the adoption row - PostgreSQL is the truth, since
the poll that carried them may have reached another replica. A digest poll then only refreshes
the row's liveness (``TOUCH``), and only while the row still carries that digest, so a row
another replica has rewritten since, or an operator has forgotten, is never revived with
reports it no longer has; the next digest poll finds the mismatch and is asked for the reports.
A report held in another replica's buffer is not visible yet: that costs the agent one extra
full report, never a wrong row.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Final

import asyncpg
import orjson
import structlog

from kmsd.metrics import Metrics

log = structlog.get_logger(__name__)

FLUSH = """
INSERT INTO adoption (path, instance_id, principal, ip, app_process_ids, held, processes,
                      versions, path_version, replica, last_seen, role, reports_digest)
SELECT r.path, r.instance_id, r.principal, r.ip,
       ARRAY(SELECT jsonb_array_elements_text(r.pids)), r.held, r.processes, r.versions,
       r.path_version, $11, r.last_seen, r.role, NULLIF(r.digest, '')
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[],
            $7::jsonb[], $8::jsonb[], $9::bigint[], $10::timestamptz[], $12::text[],
            $13::text[])
     AS r(path, instance_id, principal, ip, pids, held, processes, versions, path_version,
          last_seen, role, digest)
ON CONFLICT (path, instance_id) DO UPDATE
SET principal = EXCLUDED.principal, ip = EXCLUDED.ip, role = EXCLUDED.role,
    app_process_ids = EXCLUDED.app_process_ids, held = EXCLUDED.held,
    processes = EXCLUDED.processes, versions = EXCLUDED.versions,
    path_version = EXCLUDED.path_version, replica = EXCLUDED.replica,
    last_seen = EXCLUDED.last_seen, reports_digest = EXCLUDED.reports_digest
WHERE adoption.last_seen <= EXCLUDED.last_seen
  -- An instance's slot belongs to the principal that first reported it: another one with read
  -- on the path cannot speak for it, live or stale (it could otherwise claim a version is held
  -- and open a rotation gate). Forgetting the instance (an operator's call) frees the slot.
  AND adoption.principal = EXCLUDED.principal
"""
# A poll that sent only the digest of its reports: liveness and version, never the reports;
# and only where the row still carries those reports (the same instance, principal, digest).
TOUCH = """
UPDATE adoption AS a
SET ip = r.ip, role = r.role, path_version = r.path_version, replica = $8,
    last_seen = r.last_seen
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
            $7::timestamptz[], $9::text[])
     AS r(path, instance_id, principal, ip, digest, path_version, last_seen, role)
WHERE a.path = r.path AND a.instance_id = r.instance_id AND a.principal = r.principal
  AND a.reports_digest = r.digest AND a.last_seen <= r.last_seen
"""
DIGEST_OF = """
SELECT reports_digest FROM adoption WHERE path = $1 AND instance_id = $2 AND principal = $3
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
    # sha256 of the reports (kmsd.domain.watch.reports_digest); "" if unknown.
    digest: str = ""
    # False: the poll sent only ``digest``, and held, versions, processes and app process ids
    # are the ones kmsd already has under that digest.
    full: bool = True

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.path, self.instance_id, self.principal)


def merged(older: Report | None, newer: Report) -> Report:
    """What to keep of two reports of one instance: ``newer``, with ``older``'s reports if
    ``newer`` only named them by digest (a full report must not be lost to a digest poll
    before it is flushed)."""
    if older is not None and older.full and not newer.full and older.digest == newer.digest:
        return replace(
            older,
            ip=newer.ip,
            path_version=newer.path_version,
            seen_at=newer.seen_at,
            role=newer.role,
        )
    return newer


class AdoptionBuffer:
    """The latest unflushed report per (path, instance)."""

    def __init__(self, pool: asyncpg.Pool, replica: str, metrics: Metrics) -> None:
        self._pool = pool
        self._replica = replica
        self._metrics = metrics
        # Keyed by principal too: a report by another principal under the same instance id
        # must not replace the owner's before the database decides whose slot it is.
        self._pending: dict[tuple[str, str, str], Report] = {}
        # One flush at a time: a flush asked for while the periodic one writes waits for it,
        # so "flush, then read the table" (GET /v1/adoption) sees every report made before.
        self._flushing = asyncio.Lock()

    def report(self, report: Report) -> None:
        self._pending[report.key] = merged(self._pending.get(report.key), report)

    async def holds(self, path: str, instance_id: str, principal: str, digest: str) -> bool:
        """Whether kmsd has the reports of ``digest`` for this instance (buffered or stored)."""
        pending = self._pending.get((path, instance_id, principal))
        if pending is not None and pending.digest == digest:
            return True
        stored = await self._pool.fetchval(DIGEST_OF, path, instance_id, principal)
        return stored is not None and stored == digest

    def forget(self, path: str, instance_id: str) -> None:
        """Drop unflushed reports of an instance (an operator forgot it)."""
        for key in [k for k in self._pending if k[:2] == (path, instance_id)]:
            del self._pending[key]

    async def flush(self) -> int:
        """Write every pending report in one statement; return how many."""
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> int:
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
                newer = self._pending.get(r.key)
                self._pending[r.key] = r if newer is None else merged(r, newer)
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
        full = [r for r in batch if r.full]
        touched = [r for r in batch if not r.full]
        if full:
            await self._upsert(full)
        if touched:
            await self._pool.execute(
                TOUCH,
                [r.path for r in touched],
                [r.instance_id for r in touched],
                [r.principal for r in touched],
                [r.ip for r in touched],
                [r.digest for r in touched],
                [r.path_version for r in touched],
                [r.seen_at for r in touched],
                self._replica,
                [r.role for r in touched],
            )

    async def _upsert(self, batch: list[Report]) -> None:
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
            [r.digest for r in batch],
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
