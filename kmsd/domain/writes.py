"""How a write left in doubt is resolved (pure): the reconciler's decision table.

A put commits an intent (numbered from one sequence), writes SM, then records the metadata.
When the middle step's outcome is unknown - SM's answer lost, PostgreSQL gone right after - the
intent stays, and later the reconciler asks SM what it holds and looks up this table. The rules:

1. SM is the only witness of whether the value got there: no version in SM, nothing to record
   (the caller's failure stands).
2. A version becomes current only if SM says AWSCURRENT is on it *and* no later write of the
   secret was acknowledged (``current_seq`` is the number of the write, or rotation step, that
   made PostgreSQL's current version current). Never by assuming.
3. Otherwise SM holds a value nobody may be served: it is recorded as superseded (stage
   ``deprecated``, kept for the history) and SM's labels are repaired toward PostgreSQL's
   stages, so both end on the last acknowledged write.
4. A rotation's pending version is recorded pending only if AWSPENDING is on it and nothing was
   acknowledged since; a start that lost the race is superseded like any other write.
5. A first write (the secret has no metadata yet) that SM holds without AWSCURRENT was
   overtaken outside kmsd: nothing is recorded; the next put adopts the SM secret.

Label repair itself (``kmsd.domain.rotation.next_label_op``) runs after every resolution and in
a periodic sweep: PostgreSQL's recorded stages are the truth, once no write is in doubt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

AWSCURRENT = "AWSCURRENT"
AWSPENDING = "AWSPENDING"


class Resolution(StrEnum):
    DROP = "drop"  # SM never got it: delete the intent, record nothing
    CURRENT = "current"  # record as the current version (stages move as after a put)
    PENDING = "pending"  # record as a rotation's pending version (with its rotation row)
    SUPERSEDED = "superseded"  # record as deprecated; SM's labels follow PostgreSQL


@dataclass(frozen=True, slots=True)
class Intent:
    """An outbox row: which version, its number in the write order, what it was meant to be."""

    version_id: str
    seq: int
    stage: str  # "current" (a put) | "pending" (a rotation's start)


@dataclass(frozen=True, slots=True)
class Recorded:
    """What PostgreSQL says of the secret, read under its lock."""

    exists: bool  # the secret has metadata
    current_seq: int  # the write or step that made its current version current (0: unknown)


@dataclass(frozen=True, slots=True)
class Decision:
    resolution: Resolution
    reason: str


def resolve(  # noqa: PLR0911 - one return per row of the table above
    intent: Intent, sm_labels: Mapping[str, Sequence[str]] | None, recorded: Recorded
) -> Decision:
    """Decide an intent from SM's ``VersionIdsToStages`` (None: no such secret in SM)."""
    if sm_labels is None or intent.version_id not in sm_labels:
        return Decision(Resolution.DROP, "Secrets Manager does not hold the version")
    labels = set(sm_labels[intent.version_id])
    overtaken = recorded.current_seq > intent.seq
    if intent.stage == "pending":
        if overtaken or not recorded.exists:
            return Decision(Resolution.SUPERSEDED, "the secret moved on since the start")
        if AWSPENDING not in labels:
            return Decision(Resolution.SUPERSEDED, "AWSPENDING is not on the version")
        return Decision(Resolution.PENDING, "AWSPENDING is on the version")
    if AWSCURRENT not in labels:
        if not recorded.exists:
            return Decision(Resolution.DROP, "a first write overtaken outside kmsd")
        return Decision(Resolution.SUPERSEDED, "AWSCURRENT is on another version")
    if overtaken:
        return Decision(Resolution.SUPERSEDED, "a later write was acknowledged")
    return Decision(Resolution.CURRENT, "AWSCURRENT is on it and nothing later was acknowledged")
