"""Writing and reading the audit chain.

Writes are group-committed: concurrent requests queue their entries, one task takes everything
queued, locks the chain head (``SELECT ... FOR UPDATE``: this is what keeps replicas writing at
once on one chain), chains the batch, inserts it in one statement and moves the head, all in
one transaction. Each request waits for its batch to commit before it is answered, so a call
whose audit row cannot be written fails (fail closed) while throughput stays at thousands of
rows per second.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import asyncpg
import structlog

from kmsd.domain.audit import GENESIS, AuditEntry, ChainedRow, chain, row_matches

log = structlog.get_logger("kmsd.audit")

MAX_BATCH: Final = 2000
LOCK_HEAD = "SELECT seq, hash FROM audit_head WHERE id FOR UPDATE"
MOVE_HEAD = "UPDATE audit_head SET seq = $1, hash = $2 WHERE id"
INSERT_ROWS = """
INSERT INTO audit_log (seq, at, request_id, replica, principal, claimed, source_ip, action,
                       target, outcome, status, prev_hash, hash)
SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                     $11::smallint[], $12::bytea[], $13::bytea[])
"""
SELECT_ROWS = """
SELECT seq, at, request_id, replica, principal, claimed, source_ip, action, target, outcome,
       status, prev_hash, hash
FROM audit_log
WHERE ($1::text IS NULL OR principal = $1)
  -- the path itself, below it, or something of it ("PATH instance ID", "PATH/NAME rotation 3")
  AND ($2::text IS NULL OR target = $2 OR target LIKE $8 OR target LIKE $9)
  AND ($3::text IS NULL OR action = $3)
  AND ($4::timestamptz IS NULL OR at >= $4)
  AND ($5::timestamptz IS NULL OR at < $5)
  AND ($6::text IS NULL OR outcome = $6)
ORDER BY seq DESC
LIMIT $7
"""
WALK = "SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"


class AuditUnavailable(Exception):
    """The audit row could not be written; the call must fail."""


class AuditWriter:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._queue: list[tuple[AuditEntry, asyncio.Future[int]]] = []
        self._wakeup = asyncio.Event()
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    async def write(self, entry: AuditEntry) -> int:
        """Append ``entry`` to the chain; return its seq once committed."""
        if not self._running:
            raise AuditUnavailable("the audit writer is not running")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((entry, future))
        self._wakeup.set()
        return await future

    async def run(self) -> None:
        """Commit queued entries in batches until cancelled (then fail what is left)."""
        self._running = True
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                    await self._commit(batch)
        finally:
            self._running = False
            for _, future in self._queue:
                if not future.done():
                    future.set_exception(AuditUnavailable("kmsd is shutting down"))

    async def _commit(self, batch: Sequence[tuple[AuditEntry, asyncio.Future[int]]]) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                head = await conn.fetchrow(LOCK_HEAD)
                assert head is not None
                rows = chain(head["seq"], bytes(head["hash"]), [e for e, _ in batch])
                await conn.execute(INSERT_ROWS, *_columns(rows))
                await conn.execute(MOVE_HEAD, rows[-1].seq, rows[-1].hash)
        except Exception as exc:  # any failure fails this batch, never the writer
            log.error("audit_write_failed", error=type(exc).__name__, rows=len(batch))
            for _, future in batch:
                if not future.done():
                    future.set_exception(AuditUnavailable(type(exc).__name__))
            return
        for row, (_, future) in zip(rows, batch, strict=True):
            _log_row(row)
            if not future.done():
                future.set_result(row.seq)


def _columns(rows: Sequence[ChainedRow]) -> list[list[Any]]:
    return [
        [r.seq for r in rows],
        [r.entry.at for r in rows],
        [r.entry.request_id for r in rows],
        [r.entry.replica for r in rows],
        [r.entry.principal for r in rows],
        [r.entry.claimed for r in rows],
        [r.entry.source_ip for r in rows],
        [r.entry.action for r in rows],
        [r.entry.target for r in rows],
        [r.entry.outcome for r in rows],
        [r.entry.status for r in rows],
        [r.prev_hash for r in rows],
        [r.hash for r in rows],
    ]


def _log_row(row: ChainedRow) -> None:
    e = row.entry
    log.info(
        "audit",
        seq=row.seq,
        principal=e.principal,
        claimed=e.claimed or None,
        source_ip=e.source_ip,
        action=e.action,
        target=e.target,
        outcome=e.outcome,
        status=e.status,
        audited_request_id=e.request_id,
        chain_hash=row.hash.hex(),
    )


def row_of(record: asyncpg.Record) -> ChainedRow:
    entry = AuditEntry(
        at=record["at"],
        request_id=record["request_id"],
        replica=record["replica"],
        principal=record["principal"],
        claimed=record["claimed"],
        source_ip=record["source_ip"],
        action=record["action"],
        target=record["target"],
        outcome=record["outcome"],
        status=record["status"],
    )
    return ChainedRow(record["seq"], entry, bytes(record["prev_hash"]), bytes(record["hash"]))


async def walk(pool: asyncpg.Pool, page: int = 5000) -> AsyncIterator[ChainedRow]:
    """Every row in chain order, a page at a time."""
    after = 0
    while True:
        records = await pool.fetch(WALK, after, page)
        for record in records:
            yield row_of(record)
        if len(records) < page:
            return
        after = records[-1]["seq"]


async def verify(pool: asyncpg.Pool) -> tuple[int, int | None]:
    """Walk the whole chain; return (rows checked, first broken seq or None)."""
    checked, prev, seq = 0, GENESIS, 0
    async for row in walk(pool):
        seq += 1
        if not row_matches(prev, seq, row):
            return checked, row.seq
        checked += 1
        prev = row.hash
    # The head names the last row written: rows cut off the end of the chain show here.
    head = await pool.fetchrow("SELECT seq, hash FROM audit_head WHERE id")
    if head is not None and (head["seq"] != seq or bytes(head["hash"]) != prev):
        return checked, seq + 1
    return checked, None
