"""Rotation as a pure state machine: phases, gates, transitions and SM staging labels.

A rotation replaces a secret's current version without breaking anyone::

    start ──▶ pending ──gate 1──▶ promoted ──gate 2──▶ done
                 │ abort              │ rollback        │ rollback
                 ▼                    ▼                 ▼
              aborted            rolled_back       rolled_back

- *pending*: the new version is offered to the owner's instances only (stage ``pending``).
  Gate 1: every live owner instance holds it.
- *promote*: new → ``current``, old current → ``previous`` (an older previous → deprecated).
  Owners and referencers now read the new version. Gate 2: every live owner and referencer
  instance holds the new current.
- *revoke*: the old version → ``revoked``: offered to nobody, labelled so in SM, kept for
  rollback. The rotation is *done*.

"Live" is decided from adoption reports within a staleness window: a stale instance is listed
apart and never counted as holding anything. Nothing here does I/O: the driver in
``kmsd.services.rotation`` loads a :class:`Rotation` and the gate inputs, asks this module what
to do, and applies the answer (metadata stages, SM labels, path versions) with I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from kmsd.errors import Conflict, InvalidInput

ACTIVE = ("pending", "promoted")
FINAL = ("done", "aborted", "rolled_back")
PHASES = ACTIVE + FINAL
MODES = ("auto", "manual")
COMMANDS = ("advance", "pause", "resume", "abort", "rollback")

# SM staging labels kmsd manages, one version each at most (SM's rule for every label).
CURRENT, PENDING, PREVIOUS, REVOKED = "AWSCURRENT", "AWSPENDING", "AWSPREVIOUS", "KMSD_REVOKED"
MANAGED_LABELS = (CURRENT, PENDING, PREVIOUS, REVOKED)
LABEL_OF_STAGE = {"current": CURRENT, "pending": PENDING, "previous": PREVIOUS, "revoked": REVOKED}

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd]?)")  # ASCII digits only
DEFAULT_GATE_TIMEOUT = timedelta(hours=1)
LEAKED_GATE_TIMEOUT = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Rotation:
    id: int
    phase: str
    mode: str
    paused: bool
    leaked: bool
    gate_timeout: timedelta
    old_version: str
    new_version: str
    phase_since: datetime  # when the current gate started waiting

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    @property
    def gate(self) -> int | None:
        """The gate the rotation waits at: 1 (owners hold pending), 2 (everyone holds new)."""
        return {"pending": 1, "promoted": 2}.get(self.phase)

    def timed_out(self, now: datetime) -> bool:
        return self.active and now - self.phase_since > self.gate_timeout


@dataclass(frozen=True, slots=True)
class Instance:
    """One (instance, path) whose effective set contains the rotating secret."""

    instance_id: str
    path: str
    role: str  # owner | referencer
    name: str  # the secret's name at that path (a referencer's local name)
    current: str | None  # the version it serves as current
    holding: frozenset[str]  # every version of the secret it has fetched
    last_seen: datetime
    ip: str = ""
    processes: Mapping[str, str] = field(default_factory=dict)  # pid -> version last read


@dataclass(frozen=True, slots=True)
class GateStatus:
    number: int
    target: str
    held: tuple[Instance, ...]
    waiting: tuple[Instance, ...]  # live and not holding: the stragglers
    stale: tuple[Instance, ...]  # silent past the window: listed, never counted
    stale_after: timedelta = timedelta(0)  # the window: a straggler stops counting then

    @property
    def met(self) -> bool:
        return not self.waiting

    def as_dict(self) -> dict[str, object]:
        def row(i: Instance) -> dict[str, object]:
            return {
                "instance_id": i.instance_id,
                "path": i.path,
                "role": i.role,
                "name": i.name,
                "current": i.current,
                "ip": i.ip,
                "last_seen": i.last_seen.isoformat(),
                "stale_at": (i.last_seen + self.stale_after).isoformat(),
                "processes": dict(i.processes),
            }

        return {
            "gate": self.number,
            "target_version": self.target,
            "met": self.met,
            "counts": {
                "held": len(self.held),
                "live": len(self.held) + len(self.waiting),
                "waiting": len(self.waiting),
                "stale": len(self.stale),
            },
            "held": [row(i) for i in self.held],
            "waiting": [row(i) for i in self.waiting],
            "stale": [row(i) for i in self.stale],
        }


def gate_status(
    rotation: Rotation,
    instances: Sequence[Instance],
    *,
    now: datetime,
    stale_after: timedelta,
) -> GateStatus | None:
    """Who holds what the rotation's current gate waits for; None when no gate applies."""
    gate = rotation.gate
    if gate is None:
        return None
    target = rotation.new_version
    held: list[Instance] = []
    waiting: list[Instance] = []
    stale: list[Instance] = []
    for inst in sorted(instances, key=lambda i: (i.role, i.path, i.instance_id)):
        if gate == 1 and inst.role != "owner":
            continue  # referencers never see a pending version
        if now - inst.last_seen > stale_after:
            stale.append(inst)
        elif (target in inst.holding) if gate == 1 else (inst.current == target):
            held.append(inst)
        else:
            waiting.append(inst)
    return GateStatus(gate, target, tuple(held), tuple(waiting), tuple(stale), stale_after)


@dataclass(frozen=True, slots=True)
class Transition:
    """What to apply: the rotation's new phase and flags, and the stage of each version."""

    action: str  # promote | revoke | abort | rollback | pause | resume
    rotation: Rotation
    stages: Mapping[str, str]  # version id -> new stage (only versions that change)
    forced: bool = False
    reason: str = ""

    @property
    def moves_versions(self) -> bool:
        return bool(self.stages)


def command(
    rotation: Rotation,
    verb: str,
    *,
    gate: GateStatus | None,
    now: datetime,
    force: bool = False,
) -> Transition:
    """An operator's command; refused (with the reason) when it does not apply."""
    if verb not in COMMANDS:
        raise InvalidInput(f"command must be one of {', '.join(COMMANDS)}")
    if verb == "rollback":
        return _rollback(rotation, now)
    if not rotation.active:
        raise Conflict(f"rotation {rotation.id} is {rotation.phase}; only rollback may follow")
    if verb == "pause":
        if rotation.paused:
            raise Conflict(f"rotation {rotation.id} is already paused")
        return Transition("pause", replace(rotation, paused=True), {})
    if verb == "resume":
        if not rotation.paused:
            raise Conflict(f"rotation {rotation.id} is not paused")
        return Transition("resume", replace(rotation, paused=False, phase_since=now), {})
    if verb == "abort":
        if rotation.phase != "pending":
            raise Conflict(
                f"rotation {rotation.id} is past promotion; roll it back instead of aborting"
            )
        return Transition(
            "abort",
            replace(rotation, phase="aborted", paused=False),
            {rotation.new_version: "revoked"},
        )
    # advance
    if gate is None:
        raise Conflict(f"rotation {rotation.id}: its gate could not be evaluated; try again")
    if not gate.met and not force:
        names = ", ".join(i.instance_id for i in gate.waiting[:5])
        more = f" and {len(gate.waiting) - 5} more" if len(gate.waiting) > 5 else ""
        raise Conflict(
            f"gate {gate.number} is not met: {len(gate.waiting)} live instance(s) do not hold "
            f"{gate.target} yet ({names}{more}); wait, or advance with force"
        )
    return _advance(rotation, now, forced=not gate.met, reason="operator")


def _advance(rotation: Rotation, now: datetime, *, forced: bool, reason: str) -> Transition:
    if rotation.phase == "pending":
        return Transition(
            "promote",
            replace(rotation, phase="promoted", phase_since=now),
            {rotation.new_version: "current", rotation.old_version: "previous"},
            forced=forced,
            reason=reason,
        )
    return Transition(
        "revoke",
        replace(rotation, phase="done", paused=False, phase_since=now),
        {rotation.old_version: "revoked"},
        forced=forced,
        reason=reason,
    )


def _rollback(rotation: Rotation, now: datetime) -> Transition:
    if rotation.phase not in ("promoted", "done"):
        raise Conflict(
            f"rotation {rotation.id} is {rotation.phase}: "
            + ("abort it instead" if rotation.phase == "pending" else "nothing to roll back")
        )
    return Transition(
        "rollback",
        replace(rotation, phase="rolled_back", paused=False, phase_since=now),
        {rotation.old_version: "current", rotation.new_version: "revoked"},
    )


def tick(rotation: Rotation, gate: GateStatus | None, now: datetime) -> Transition | None:
    """What the driver does on its own: advance an auto rotation whose gate is met.

    A leaked secret's rotation (auto, short timeout) also promotes when gate 1 times out: the
    old value is compromised, and owners keep it as ``previous`` meanwhile. Revocation never
    happens on a timeout: an operator's explicit ``advance`` decides it.
    """
    if not rotation.active or rotation.paused or gate is None:
        return None
    if rotation.mode == "auto" and gate.met:
        return _advance(rotation, now, forced=False, reason="gate met")
    if rotation.leaked and rotation.phase == "pending" and rotation.timed_out(now):
        return _advance(rotation, now, forced=True, reason="leaked: gate 1 timed out")
    return None


# -- SM staging labels -----------------------------------------------------------------------


def desired_labels(stages: Mapping[str, str]) -> dict[str, str | None]:
    """Which version each managed label should be on, from the versions' stages."""
    desired: dict[str, str | None] = dict.fromkeys(MANAGED_LABELS)
    for version_id, stage in sorted(stages.items()):
        label = LABEL_OF_STAGE.get(stage)
        if label is not None:
            desired[label] = version_id
    return desired


@dataclass(frozen=True, slots=True)
class LabelOp:
    label: str
    move_to: str | None
    remove_from: str | None


def next_label_op(
    actual: Mapping[str, Sequence[str]], desired: Mapping[str, str | None]
) -> LabelOp | None:
    """The next ``UpdateSecretVersionStage`` to bring SM's labels to ``desired``, or None.

    ``actual`` is DescribeSecret's ``VersionIdsToStages``. AWSCURRENT is moved first and only
    ever *moved* (one call, from the old holder to the new), so the secret is never without a
    current version; SM then moves AWSPREVIOUS by itself, so the caller describes the secret
    again after every call and asks for the next one (idempotent after a crash).
    """
    holders: dict[str, list[str]] = {}
    for vid, labels in sorted(actual.items()):
        for label in labels:
            have = holders.setdefault(label, [])
            if vid not in have:  # moto can list one label twice on a version
                have.append(vid)
    for label in (CURRENT, PENDING, PREVIOUS, REVOKED):
        want = desired.get(label)
        have = holders.get(label, [])
        if want is not None and have != [want]:
            # Moved from a holder that is not the target (a label on two versions, which a
            # misbehaving client can cause, loses one holder per call).
            others = [v for v in have if v != want]
            return LabelOp(label, want, others[0] if others else None)
    for label in (PENDING, PREVIOUS, REVOKED):  # AWSCURRENT is never taken away, only moved
        if desired.get(label) is None and holders.get(label):
            return LabelOp(label, None, holders[label][0])
    return None


def parse_duration(raw: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``1d`` (or plain seconds) as a timedelta, 10 s to 30 days."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}
    match = _DURATION.fullmatch(raw.strip().lower())
    if match is None:
        raise InvalidInput(f"gate timeout {raw!r}: use e.g. 90s, 15m, 2h or 1d")
    seconds = float(match[1]) * units[match[2]]
    if not 10 <= seconds <= 30 * 86400:
        raise InvalidInput("gate timeout must be between 10 seconds and 30 days")
    return timedelta(seconds=seconds)


def offered(phase: str, paused: bool, new: str, old: str) -> list[tuple[str, str]]:
    """The commands an operator may give a rotation in ``phase``, each with what it will do
    (the words a confirmation shows). ``command`` refuses the others anyway."""
    if phase == "done":
        return [("rollback", f"make {old} current again and revoke {new}")]
    if phase not in ACTIVE:
        return []
    steps = [
        ("resume", "let the driver advance this rotation again")
        if paused
        else ("pause", "stop the driver advancing this rotation (nothing changes meanwhile)")
    ]
    if phase == "pending":
        steps.insert(0, ("advance", f"promote {new} to current; {old} becomes previous"))
        steps.append(("abort", f"revoke the pending {new}; {old} stays current"))
    else:
        steps.insert(0, ("advance", f"revoke {old}: instances still holding it lose it"))
        steps.append(("rollback", f"make {old} current again and revoke {new}"))
    return steps
