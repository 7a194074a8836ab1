"""The audit hash chain, without a database."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest

from kmsd.domain.audit import (
    GENESIS,
    AuditEntry,
    canonical,
    chain,
    first_broken,
    link,
    outcome_of,
)

T0 = datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=UTC)


def entry(i: int) -> AuditEntry:
    return AuditEntry(
        at=T0 + timedelta(seconds=i),
        request_id=f"r{i}",
        replica="h:1",
        principal="arn:aws:iam::123456789012:user/ops",
        claimed="",
        source_ip="10.0.0.1",
        action="effective.read",
        target="prod/pay",
        outcome="allowed",
        status=200,
    )


ROWS = chain(0, GENESIS, [entry(i) for i in range(6)])


def test_chain_links_each_row_to_the_previous() -> None:
    assert [r.seq for r in ROWS] == [1, 2, 3, 4, 5, 6]
    assert ROWS[0].prev_hash == GENESIS
    for prev, row in itertools.pairwise(ROWS):
        assert row.prev_hash == prev.hash
        assert row.hash == link(prev.hash, row.seq, row.entry)
    assert first_broken(ROWS) is None


def test_chain_continues_from_a_head() -> None:
    more = chain(ROWS[-1].seq, ROWS[-1].hash, [entry(9)])
    assert first_broken([*ROWS, *more]) is None


@pytest.mark.parametrize(
    ("at", "tamper"),
    [
        (2, lambda r: dataclasses.replace(r, entry=dataclasses.replace(r.entry, principal="x"))),
        (0, lambda r: dataclasses.replace(r, entry=dataclasses.replace(r.entry, status=403))),
        (4, lambda r: dataclasses.replace(r, hash=bytes(32))),
        (3, lambda r: dataclasses.replace(r, prev_hash=bytes(32))),
        (5, lambda r: dataclasses.replace(r, seq=99)),
    ],
)
def test_first_broken_names_the_edited_row(at: int, tamper: object) -> None:
    rows = list(ROWS)
    rows[at] = tamper(rows[at])  # type: ignore[operator]
    assert first_broken(rows) == rows[at].seq


def test_deleted_and_reordered_rows_are_found() -> None:
    assert first_broken(ROWS[:2] + ROWS[3:]) == 4
    assert first_broken([ROWS[1], ROWS[0], *ROWS[2:]]) == 2


def test_canonical_time_is_utc_whatever_the_zone() -> None:
    shifted = dataclasses.replace(entry(0), at=T0.astimezone(timezone(timedelta(hours=8))))
    assert canonical(1, shifted) == canonical(1, entry(0))
    assert b'"at":"2026-11-29T12:00:00.123456Z"' in canonical(1, entry(0))


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "allowed"),
        (304, "allowed"),
        (401, "denied"),
        (403, "denied"),
        (400, "rejected"),
        (409, "rejected"),
        (500, "error"),
        (503, "error"),
    ],
)
def test_outcome_of(status: int, outcome: str) -> None:
    assert outcome_of(status) == outcome
