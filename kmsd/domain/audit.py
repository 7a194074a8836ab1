"""Audit rows and their hash chain (pure).

Each row's hash is ``sha256(prev_hash || canonical(row))`` where ``canonical`` is the row's
fields as JSON with sorted keys and the time in UTC with microseconds: the same bytes whoever
computes them, so ``verify`` can recompute the chain from the stored rows alone. Editing,
deleting or reordering any row breaks every hash from that row on; ``verify`` names the first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import orjson

GENESIS = bytes(32)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What happened, before it has a place in the chain."""

    at: datetime
    request_id: str
    replica: str
    principal: str
    claimed: str
    source_ip: str
    action: str
    target: str
    outcome: str
    status: int


@dataclass(frozen=True, slots=True)
class ChainedRow:
    seq: int
    entry: AuditEntry
    prev_hash: bytes
    hash: bytes


def outcome_of(status: int) -> str:
    """Classify an HTTP status: allowed, denied (401/403), rejected (other 4xx) or error."""
    if status < 400:
        return "allowed"
    if status in (401, 403):
        return "denied"
    return "rejected" if status < 500 else "error"


def canonical(seq: int, entry: AuditEntry) -> bytes:
    """The bytes that are hashed for a row."""
    fields = asdict(entry)
    fields["at"] = entry.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    fields["seq"] = seq
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


def link(prev_hash: bytes, seq: int, entry: AuditEntry) -> bytes:
    return hashlib.sha256(prev_hash + canonical(seq, entry)).digest()


def chain(head_seq: int, head_hash: bytes, entries: Iterable[AuditEntry]) -> list[ChainedRow]:
    """Give ``entries`` consecutive places after the head."""
    rows = []
    prev, seq = head_hash, head_seq
    for entry in entries:
        seq += 1
        digest = link(prev, seq, entry)
        rows.append(ChainedRow(seq, entry, prev, digest))
        prev = digest
    return rows


def row_matches(prev_hash: bytes, expected_seq: int, row: ChainedRow) -> bool:
    """Whether ``row`` is the ``expected_seq``-th link after ``prev_hash``."""
    return (
        row.seq == expected_seq
        and row.prev_hash == prev_hash
        and row.hash == link(prev_hash, row.seq, row.entry)
    )


def first_broken(
    rows: Iterable[ChainedRow], start_hash: bytes = GENESIS, start_seq: int = 0
) -> int | None:
    """Return the seq of the first row that does not match the chain, or None if all match."""
    prev, seq = start_hash, start_seq
    for row in rows:
        seq += 1
        if not row_matches(prev, seq, row):
            return row.seq
        prev = row.hash
    return None
