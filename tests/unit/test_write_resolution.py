"""The reconciler's decision table (kmsd.domain.writes): one test per row, and its edges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from kmsd.domain.writes import Intent, Recorded, Resolution, resolve

V = "v-in-doubt"
OTHER = "v-other"

Labels = Mapping[str, Sequence[str]] | None

# (name, intent stage, intent seq, SM labels or None, PostgreSQL exists, current_seq) -> outcome
ROWS: list[tuple[str, str, int, Labels, bool, int, Resolution]] = [
    # 1. SM is the only witness: no secret, or no such version -> nothing recorded.
    ("no secret in SM", "current", 5, None, True, 3, Resolution.DROP),
    ("SM lacks the version", "current", 5, {OTHER: ["AWSCURRENT"]}, True, 3, Resolution.DROP),
    ("first write never landed", "current", 5, None, False, 0, Resolution.DROP),
    # 2. Current only if AWSCURRENT is on it and nothing later was acknowledged.
    (
        "AWSCURRENT on it, nothing later",
        "current",
        5,
        {V: ["AWSCURRENT"], OTHER: ["AWSPREVIOUS"]},
        True,
        3,
        Resolution.CURRENT,
    ),
    ("a first write that landed", "current", 5, {V: ["AWSCURRENT"]}, False, 0, Resolution.CURRENT),
    # 3. A later acknowledged write wins, even where SM's label says otherwise.
    (
        "AWSCURRENT on it, later write acknowledged",
        "current",
        5,
        {V: ["AWSCURRENT"], OTHER: ["AWSPREVIOUS"]},
        True,
        7,
        Resolution.SUPERSEDED,
    ),
    (
        "AWSCURRENT elsewhere",
        "current",
        5,
        {V: ["AWSPREVIOUS"], OTHER: ["AWSCURRENT"]},
        True,
        7,
        Resolution.SUPERSEDED,
    ),
    (
        "AWSCURRENT elsewhere, nothing later (never assume)",
        "current",
        5,
        {V: [], OTHER: ["AWSCURRENT"]},
        True,
        3,
        Resolution.SUPERSEDED,
    ),
    # 4. A rotation's pending version.
    (
        "AWSPENDING on it",
        "pending",
        5,
        {V: ["AWSPENDING"], OTHER: ["AWSCURRENT"]},
        True,
        3,
        Resolution.PENDING,
    ),
    (
        "pending, secret moved on",
        "pending",
        5,
        {V: ["AWSPENDING"], OTHER: ["AWSCURRENT"]},
        True,
        9,
        Resolution.SUPERSEDED,
    ),
    (
        "pending without AWSPENDING",
        "pending",
        5,
        {V: [], OTHER: ["AWSCURRENT"]},
        True,
        3,
        Resolution.SUPERSEDED,
    ),
    (
        "pending of a secret since deleted",
        "pending",
        5,
        {V: ["AWSPENDING"]},
        False,
        0,
        Resolution.SUPERSEDED,
    ),
    ("pending never landed", "pending", 5, {OTHER: ["AWSCURRENT"]}, True, 3, Resolution.DROP),
    # 5. A first write overtaken outside kmsd: nothing to record.
    (
        "first write, AWSCURRENT elsewhere",
        "current",
        5,
        {V: [], OTHER: ["AWSCURRENT"]},
        False,
        0,
        Resolution.DROP,
    ),
]


@pytest.mark.parametrize(
    ("stage", "seq", "labels", "exists", "current_seq", "expected"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_decision_table(
    stage: str, seq: int, labels: Labels, exists: bool, current_seq: int, expected: Resolution
) -> None:
    decision = resolve(Intent(V, seq, stage), labels, Recorded(exists, current_seq))
    assert decision.resolution is expected
    assert decision.reason


@pytest.mark.parametrize(
    ("current_seq", "expected"), [(4, "current"), (5, "current"), (6, "superseded")]
)
def test_only_a_strictly_later_write_overtakes(current_seq: int, expected: str) -> None:
    # current_seq equal to the intent's own number is the intent itself (recorded, then retried).
    decision = resolve(Intent(V, 5, "current"), {V: ["AWSCURRENT"]}, Recorded(True, current_seq))
    assert decision.resolution.value == expected


def test_every_resolution_is_reachable() -> None:
    assert {row[-1] for row in ROWS} == set(Resolution)
