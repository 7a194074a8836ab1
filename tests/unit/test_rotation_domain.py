"""Rotation as a pure state machine (kmsd.domain.rotation): gates, commands, ticks, SM labels."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from kmsd.domain.rotation import (
    ACTIVE,
    COMMANDS,
    CURRENT,
    DEFAULT_GATE_TIMEOUT,
    FINAL,
    LEAKED_GATE_TIMEOUT,
    MANAGED_LABELS,
    PENDING,
    PHASES,
    PREVIOUS,
    REVOKED,
    GateStatus,
    Instance,
    LabelOp,
    Rotation,
    Transition,
    command,
    desired_labels,
    gate_status,
    next_label_op,
    parse_duration,
    tick,
)
from kmsd.errors import Conflict, InvalidInput

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(hours=3)
STALE = timedelta(minutes=10)
TICK = timedelta(microseconds=1)
OLDER, OLD, NEW = "v-older", "v-old", "v-new"


def rot(
    phase: str = "pending",
    *,
    mode: str = "auto",
    paused: bool = False,
    leaked: bool = False,
    timeout: timedelta = DEFAULT_GATE_TIMEOUT,
    since: datetime = T0,
) -> Rotation:
    return Rotation(
        id=7,
        phase=phase,
        mode=mode,
        paused=paused,
        leaked=leaked,
        gate_timeout=timeout,
        old_version=OLD,
        new_version=NEW,
        phase_since=since,
    )


def inst(
    instance_id: str,
    role: str = "owner",
    *,
    path: str = "ns/app",
    current: str | None = OLD,
    holding: tuple[str, ...] = (OLD,),
    seen: datetime = T0,
) -> Instance:
    return Instance(
        instance_id=instance_id,
        path=path,
        role=role,
        name="db",
        current=current,
        holding=frozenset(holding),
        last_seen=seen,
    )


def status(number: int, waiting: tuple[str, ...] = (), held: tuple[str, ...] = ()) -> GateStatus:
    """A gate built by hand (as if from gate_status) with these instance ids."""
    return GateStatus(
        number,
        NEW,
        tuple(inst(i) for i in held),
        tuple(inst(i) for i in waiting),
        (),
    )


def met_gate(rotation: Rotation) -> GateStatus | None:
    return None if rotation.gate is None else status(rotation.gate, held=("i-ok",))


def ids(instances: tuple[Instance, ...]) -> tuple[str, ...]:
    return tuple(i.instance_id for i in instances)


# -- Rotation properties -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "gate", "active"),
    [
        ("pending", 1, True),
        ("promoted", 2, True),
        ("done", None, False),
        ("aborted", None, False),
        ("rolled_back", None, False),
    ],
)
def test_gate_and_active_by_phase(phase: str, gate: int | None, active: bool) -> None:
    r = rot(phase)
    assert r.gate == gate
    assert r.active is active


def test_phase_constants_partition() -> None:
    assert set(ACTIVE) | set(FINAL) == set(PHASES)
    assert not set(ACTIVE) & set(FINAL)


TIMED_OUT_CASES = {
    "before the phase started": ("pending", T0 - timedelta(hours=2), False),
    "at the start": ("pending", T0, False),
    "just inside": ("pending", T0 + DEFAULT_GATE_TIMEOUT - TICK, False),
    "exactly at the timeout is not out": ("pending", T0 + DEFAULT_GATE_TIMEOUT, False),
    "just past the timeout": ("pending", T0 + DEFAULT_GATE_TIMEOUT + TICK, True),
    "promoted past the timeout": ("promoted", T0 + DEFAULT_GATE_TIMEOUT + TICK, True),
    "done never times out": ("done", T0 + timedelta(days=365), False),
    "aborted never times out": ("aborted", T0 + timedelta(days=365), False),
    "rolled_back never times out": ("rolled_back", T0 + timedelta(days=365), False),
}


@pytest.mark.parametrize(
    ("phase", "now", "expected"), TIMED_OUT_CASES.values(), ids=TIMED_OUT_CASES.keys()
)
def test_timed_out(phase: str, now: datetime, expected: bool) -> None:
    assert rot(phase).timed_out(now) is expected


def test_timed_out_uses_the_rotations_own_timeout() -> None:
    r = rot(timeout=LEAKED_GATE_TIMEOUT)
    assert not r.timed_out(T0 + LEAKED_GATE_TIMEOUT)
    assert r.timed_out(T0 + LEAKED_GATE_TIMEOUT + TICK)


# -- gate_status -------------------------------------------------------------------------------

BOTH = (OLD, NEW)

# Each case: phase, instances, then the expected held, waiting and stale instance ids.
GATE_CASES: dict[str, tuple[str, list[Instance], list[str], list[str], list[str]]] = {
    "gate 1, nobody": ("pending", [], [], [], []),
    "gate 2, nobody": ("promoted", [], [], [], []),
    "gate 1, owner holds the new version": ("pending", [inst("a", holding=BOTH)], ["a"], [], []),
    "gate 1, owner holds only the old": ("pending", [inst("a")], [], ["a"], []),
    "gate 1, holding is enough (still serving old)": (
        "pending",
        [inst("a", current=OLD, holding=BOTH)],
        ["a"],
        [],
        [],
    ),
    "gate 1, owner that holds nothing waits": (
        "pending",
        [inst("a", current=None, holding=())],
        [],
        ["a"],
        [],
    ),
    "gate 1 skips a waiting referencer": ("pending", [inst("r", "referencer")], [], [], []),
    "gate 1 skips a holding referencer": (
        "pending",
        [inst("r", "referencer", current=NEW, holding=BOTH)],
        [],
        [],
        [],
    ),
    "gate 1 skips a stale referencer (not even listed stale)": (
        "pending",
        [inst("r", "referencer", seen=T0 - timedelta(days=1))],
        [],
        [],
        [],
    ),
    "gate 1, mixed owners and referencers": (
        "pending",
        [inst("a", holding=BOTH), inst("b"), inst("r", "referencer")],
        ["a"],
        ["b"],
        [],
    ),
    "gate 2, owner serving the new version": (
        "promoted",
        [inst("a", current=NEW, holding=BOTH)],
        ["a"],
        [],
        [],
    ),
    "gate 2, owner holding but still serving old waits": (
        "promoted",
        [inst("a", current=OLD, holding=BOTH)],
        [],
        ["a"],
        [],
    ),
    "gate 2 counts a referencer serving new": (
        "promoted",
        [inst("r", "referencer", current=NEW, holding=(NEW,))],
        ["r"],
        [],
        [],
    ),
    "gate 2 counts a referencer serving old": (
        "promoted",
        [inst("r", "referencer")],
        [],
        ["r"],
        [],
    ),
    "gate 2, referencer serving nothing waits": (
        "promoted",
        [inst("r", "referencer", current=None, holding=())],
        [],
        ["r"],
        [],
    ),
    "stale owner holding new is not counted as held": (
        "pending",
        [inst("a", holding=BOTH, seen=T0 - STALE - TICK)],
        [],
        [],
        ["a"],
    ),
    "stale owner not holding does not block": (
        "pending",
        [inst("a", seen=T0 - STALE - TICK)],
        [],
        [],
        ["a"],
    ),
    "gate 2, stale referencer does not block": (
        "promoted",
        [inst("r", "referencer", seen=T0 - timedelta(days=3))],
        [],
        [],
        ["r"],
    ),
    "gate 2, stale owner serving new is not held": (
        "promoted",
        [inst("a", current=NEW, holding=BOTH, seen=T0 - STALE - TICK)],
        [],
        [],
        ["a"],
    ),
    "seen exactly stale_after ago is still live": (
        "pending",
        [inst("a", seen=T0 - STALE), inst("b", holding=BOTH, seen=T0 - STALE)],
        ["b"],
        ["a"],
        [],
    ),
    "seen in the future is live": (
        "pending",
        [inst("a", seen=T0 + timedelta(hours=1))],
        [],
        ["a"],
        [],
    ),
    "everyone stale: nobody waits": (
        "promoted",
        [inst("a", seen=T0 - STALE - TICK), inst("r", "referencer", seen=T0 - STALE - TICK)],
        [],
        [],
        ["a", "r"],
    ),
    "same instance at two paths counts twice": (
        "pending",
        [inst("a", path="ns/app/x", holding=BOTH), inst("a", path="ns/app/y")],
        ["a"],
        ["a"],
        [],
    ),
}


@pytest.mark.parametrize(
    ("phase", "instances", "held", "waiting", "stale"),
    GATE_CASES.values(),
    ids=GATE_CASES.keys(),
)
def test_gate_status(
    phase: str, instances: list[Instance], held: list[str], waiting: list[str], stale: list[str]
) -> None:
    rotation = rot(phase)
    got = gate_status(rotation, instances, now=T0, stale_after=STALE)
    assert got is not None
    assert got.number == rotation.gate
    assert got.target == NEW
    assert (ids(got.held), ids(got.waiting), ids(got.stale)) == (
        tuple(held),
        tuple(waiting),
        tuple(stale),
    )
    assert got.met is (not waiting)
    # A stale instance is never counted as held or waiting.
    live = {id(i) for i in got.held + got.waiting}
    assert not live & {id(i) for i in got.stale}


@pytest.mark.parametrize("phase", FINAL)
def test_gate_status_none_for_final_phases(phase: str) -> None:
    instances = [inst("a"), inst("r", "referencer")]
    assert gate_status(rot(phase), instances, now=T0, stale_after=STALE) is None


def test_gate_status_order_is_deterministic() -> None:
    instances = [
        inst("r2", "referencer", path="ns/app/a"),
        inst("o2", path="ns/app/b"),
        inst("r1", "referencer", path="ns/app/a", current=NEW, holding=(NEW,)),
        inst("o1", path="ns/app/a"),
        inst("o0", path="ns/app/b"),
        inst("s1", path="ns/app/a", seen=T0 - STALE - TICK),
        inst("s0", "referencer", path="ns/app/a", seen=T0 - STALE - TICK),
    ]
    results = {
        (ids(g.held), ids(g.waiting), ids(g.stale))
        for perm in itertools.permutations(instances)
        if (g := gate_status(rot("promoted"), perm, now=T0, stale_after=STALE)) is not None
    }
    # Owners before referencers, then by path, then by instance id.
    assert results == {(("r1",), ("o1", "o0", "o2", "r2"), ("s1", "s0"))}


def test_gate_status_as_dict() -> None:
    seen = T0 - timedelta(seconds=30)
    instances = [
        Instance(
            "i-1", "ns/app", "owner", "db", NEW, frozenset(BOTH), seen, "10.0.0.1", {"42": NEW}
        ),
        Instance("i-2", "ns/web", "referencer", "app-db", OLD, frozenset({OLD}), seen, "10.0.0.2"),
        Instance("i-3", "ns/app", "owner", "db", OLD, frozenset({OLD}), T0 - timedelta(days=1)),
    ]
    got = gate_status(rot("promoted"), instances, now=T0, stale_after=STALE)
    assert got is not None
    doc = got.as_dict()
    assert doc["gate"] == 2
    assert doc["target_version"] == NEW
    assert doc["met"] is False
    assert doc["counts"] == {"held": 1, "live": 2, "waiting": 1, "stale": 1}
    assert doc["held"] == [
        {
            "instance_id": "i-1",
            "path": "ns/app",
            "role": "owner",
            "name": "db",
            "current": NEW,
            "ip": "10.0.0.1",
            "last_seen": "2029-12-31T23:59:30+00:00",
            "stale_at": (seen + STALE).isoformat(),
            "processes": {"42": NEW},
        }
    ]
    assert doc["waiting"] == [
        {
            "instance_id": "i-2",
            "path": "ns/web",
            "role": "referencer",
            "name": "app-db",
            "current": OLD,
            "ip": "10.0.0.2",
            "last_seen": seen.isoformat(),
            "stale_at": (seen + STALE).isoformat(),
            "processes": {},
        }
    ]
    stale_rows = doc["stale"]
    assert isinstance(stale_rows, list)
    assert [row["instance_id"] for row in stale_rows] == ["i-3"]


def test_gate_status_as_dict_empty_gate_is_met() -> None:
    got = gate_status(rot(), [], now=T0, stale_after=STALE)
    assert got is not None
    assert got.as_dict() == {
        "gate": 1,
        "target_version": NEW,
        "met": True,
        "counts": {"held": 0, "live": 0, "waiting": 0, "stale": 0},
        "held": [],
        "waiting": [],
        "stale": [],
    }


# -- command -----------------------------------------------------------------------------------

# Each ok row: phase, paused, verb -> action, new phase, new paused, stages.
OK = {
    "pending/advance": (
        "pending",
        False,
        "advance",
        "promote",
        "promoted",
        False,
        {NEW: "current", OLD: "previous"},
    ),
    "pending/pause": ("pending", False, "pause", "pause", "pending", True, {}),
    "pending/abort": ("pending", False, "abort", "abort", "aborted", False, {NEW: "revoked"}),
    "paused pending/advance keeps the pause": (
        "pending",
        True,
        "advance",
        "promote",
        "promoted",
        True,
        {NEW: "current", OLD: "previous"},
    ),
    "paused pending/resume": ("pending", True, "resume", "resume", "pending", False, {}),
    "paused pending/abort": ("pending", True, "abort", "abort", "aborted", False, {NEW: "revoked"}),
    "promoted/advance": ("promoted", False, "advance", "revoke", "done", False, {OLD: "revoked"}),
    "promoted/pause": ("promoted", False, "pause", "pause", "promoted", True, {}),
    "promoted/rollback": (
        "promoted",
        False,
        "rollback",
        "rollback",
        "rolled_back",
        False,
        {OLD: "current", NEW: "revoked"},
    ),
    "paused promoted/resume": ("promoted", True, "resume", "resume", "promoted", False, {}),
    "paused promoted/rollback": (
        "promoted",
        True,
        "rollback",
        "rollback",
        "rolled_back",
        False,
        {OLD: "current", NEW: "revoked"},
    ),
    "done/rollback": (
        "done",
        False,
        "rollback",
        "rollback",
        "rolled_back",
        False,
        {OLD: "current", NEW: "revoked"},
    ),
}


@pytest.mark.parametrize(
    ("phase", "paused", "verb", "action", "new_phase", "new_paused", "stages"),
    OK.values(),
    ids=OK.keys(),
)
def test_command_applies(
    phase: str,
    paused: bool,
    verb: str,
    action: str,
    new_phase: str,
    new_paused: bool,
    stages: dict[str, str],
) -> None:
    before = rot(phase, paused=paused)
    t = command(before, verb, gate=met_gate(before), now=LATER)
    assert t.action == action
    assert t.rotation.phase == new_phase
    assert t.rotation.paused is new_paused
    assert dict(t.stages) == stages
    assert t.moves_versions is bool(stages)
    assert t.forced is False
    # Identity and settings never change with a command.
    assert replace(t.rotation, phase=phase, paused=paused, phase_since=T0) == before
    # A phase change starts the next gate's clock; pause keeps the running clock.
    if action in ("promote", "revoke", "rollback", "resume"):
        assert t.rotation.phase_since == LATER
    if action == "pause":
        assert t.rotation.phase_since == T0


def _refusals() -> dict[str, tuple[str, bool, str, str]]:
    """Each row: phase, paused, verb, a fragment of the Conflict's detail."""
    rows = {
        "pending/resume": ("pending", False, "resume", "rotation 7 is not paused"),
        "pending/rollback": ("pending", False, "rollback", "rotation 7 is pending: abort it"),
        "paused pending/pause": ("pending", True, "pause", "rotation 7 is already paused"),
        "paused pending/rollback": ("pending", True, "rollback", "abort it instead"),
        "promoted/resume": ("promoted", False, "resume", "rotation 7 is not paused"),
        "promoted/abort": ("promoted", False, "abort", "roll it back instead"),
        "paused promoted/pause": ("promoted", True, "pause", "rotation 7 is already paused"),
        "paused promoted/abort": ("promoted", True, "abort", "roll it back instead"),
    }
    for phase in FINAL:
        for verb in ("advance", "pause", "resume", "abort"):
            rows[f"{phase}/{verb}"] = (
                phase,
                False,
                verb,
                f"rotation 7 is {phase}; only rollback may follow",
            )
    for phase in ("aborted", "rolled_back"):
        rows[f"{phase}/rollback"] = (
            phase,
            False,
            "rollback",
            f"rotation 7 is {phase}: nothing to roll back",
        )
    return rows


REFUSED = _refusals()


@pytest.mark.parametrize(
    ("phase", "paused", "verb", "detail"), REFUSED.values(), ids=REFUSED.keys()
)
def test_command_refused(phase: str, paused: bool, verb: str, detail: str) -> None:
    r = rot(phase, paused=paused)
    with pytest.raises(Conflict, match=re.escape(detail)):
        command(r, verb, gate=met_gate(r), now=LATER, force=True)


def test_command_table_covers_every_verb_in_every_phase() -> None:
    covered = {(p, paused, v) for p, paused, v, *_ in OK.values()}
    covered |= {(p, paused, v) for p, paused, v, _ in REFUSED.values()}
    covered.add(("promoted", True, "advance"))  # test_a_final_phase_is_never_paused
    expected = {(p, False, v) for p in PHASES for v in COMMANDS}
    expected |= {(p, True, v) for p in ACTIVE for v in COMMANDS}
    assert covered == expected
    assert not {(p, paused, v) for p, paused, v, *_ in OK.values()} & {
        (p, paused, v) for p, paused, v, _ in REFUSED.values()
    }


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("verb", ["", "ADVANCE", "promote", "revoke", "start", " pause"])
def test_command_unknown_verb(phase: str, verb: str) -> None:
    r = rot(phase)
    with pytest.raises(InvalidInput, match="advance, pause, resume, abort, rollback"):
        command(r, verb, gate=met_gate(r), now=LATER)


@pytest.mark.parametrize(("phase", "number"), [("pending", 1), ("promoted", 2)])
def test_advance_refused_when_gate_not_met(phase: str, number: int) -> None:
    with pytest.raises(Conflict) as info:
        command(rot(phase), "advance", gate=status(number, ("i-b", "i-a")), now=LATER)
    detail = info.value.detail
    assert f"gate {number} is not met" in detail
    assert "2 live instance(s)" in detail
    assert f"do not hold {NEW} yet (i-b, i-a)" in detail
    assert "advance with force" in detail
    assert "more" not in detail


WAITING_NAMES = {
    "one": (["i-1"], "(i-1)"),
    "exactly five": (
        [f"i-{n}" for n in range(1, 6)],
        "(i-1, i-2, i-3, i-4, i-5)",
    ),
    "six: one more": ([f"i-{n}" for n in range(1, 7)], "(i-1, i-2, i-3, i-4, i-5 and 1 more)"),
    "twelve: seven more": (
        [f"i-{n:02}" for n in range(1, 13)],
        "(i-01, i-02, i-03, i-04, i-05 and 7 more)",
    ),
}


@pytest.mark.parametrize(("waiting", "names"), WAITING_NAMES.values(), ids=WAITING_NAMES.keys())
def test_advance_refusal_names_at_most_five(waiting: list[str], names: str) -> None:
    with pytest.raises(Conflict) as info:
        command(rot(), "advance", gate=status(1, tuple(waiting)), now=LATER)
    detail = info.value.detail
    assert f"{len(waiting)} live instance(s)" in detail
    assert names in detail
    for hidden in waiting[5:]:
        assert hidden not in detail


@pytest.mark.parametrize(
    ("phase", "action", "new_phase"),
    [("pending", "promote", "promoted"), ("promoted", "revoke", "done")],
)
def test_advance_with_force_past_unmet_gate(phase: str, action: str, new_phase: str) -> None:
    gate = status(1 if phase == "pending" else 2, ("i-late",), ("i-ok",))
    t = command(rot(phase), "advance", gate=gate, now=LATER, force=True)
    assert (t.action, t.rotation.phase, t.forced, t.reason) == (action, new_phase, True, "operator")
    assert t.rotation.phase_since == LATER


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("phase", ACTIVE)
def test_advance_with_met_gate_is_not_forced(phase: str, force: bool) -> None:
    r = rot(phase)
    t = command(r, "advance", gate=met_gate(r), now=LATER, force=force)
    assert t.forced is False
    assert t.reason == "operator"


def test_advance_with_empty_gate_is_met() -> None:
    t = command(rot(), "advance", gate=status(1), now=LATER)
    assert (t.action, t.forced) == ("promote", False)


def test_resume_resets_the_gate_clock() -> None:
    r = rot("pending", paused=True, since=T0)
    assert r.timed_out(LATER)
    t = command(r, "resume", gate=met_gate(r), now=LATER)
    assert t.rotation.phase_since == LATER
    assert not t.rotation.timed_out(LATER + DEFAULT_GATE_TIMEOUT)


def test_command_leaves_its_input_alone() -> None:
    r = rot("pending")
    command(r, "advance", gate=met_gate(r), now=LATER)
    assert r == rot("pending")


def test_a_final_phase_is_never_paused() -> None:
    r = rot("promoted", paused=True)
    t = command(r, "advance", gate=met_gate(r), now=LATER)
    assert t.rotation.phase == "done"
    assert t.rotation.paused is False


# -- tick --------------------------------------------------------------------------------------

TIMED_OUT = T0 + DEFAULT_GATE_TIMEOUT + TICK
LEAK_OUT = T0 + LEAKED_GATE_TIMEOUT + TICK


def leaked(phase: str = "pending", *, paused: bool = False) -> Rotation:
    return rot(phase, paused=paused, leaked=True, timeout=LEAKED_GATE_TIMEOUT)


# Each case: rotation, whether its gate is met, now, then (action, forced, reason) or None.
TICK_CASES: dict[str, tuple[Rotation, bool, datetime, tuple[str, bool, str] | None]] = {
    "auto, gate 1 met: promote": (rot(), True, LATER, ("promote", False, "gate met")),
    "auto, gate 2 met: revoke": (rot("promoted"), True, LATER, ("revoke", False, "gate met")),
    "auto, gate 1 not met": (rot(), False, LATER, None),
    "auto, gate 2 not met": (rot("promoted"), False, LATER, None),
    "manual, gate 1 met": (rot(mode="manual"), True, LATER, None),
    "manual, gate 2 met": (rot("promoted", mode="manual"), True, LATER, None),
    "paused auto, gate met": (rot(paused=True), True, LATER, None),
    "paused auto promoted, gate met": (rot("promoted", paused=True), True, LATER, None),
    "leaked, gate 1 timed out: forced promote": (
        leaked(),
        False,
        LEAK_OUT,
        ("promote", True, "leaked: gate 1 timed out"),
    ),
    "leaked, gate 1 at the timeout exactly": (leaked(), False, T0 + LEAKED_GATE_TIMEOUT, None),
    "leaked, gate 1 not yet timed out": (leaked(), False, T0 + timedelta(minutes=1), None),
    "leaked, gate 1 met and timed out: not forced": (
        leaked(),
        True,
        LEAK_OUT,
        ("promote", False, "gate met"),
    ),
    "leaked and paused, timed out": (leaked(paused=True), False, LEAK_OUT, None),
    "leaked, gate 2 timed out: never revokes": (leaked("promoted"), False, LATER, None),
    "leaked, gate 2 met: revokes on the gate": (
        leaked("promoted"),
        True,
        LATER,
        ("revoke", False, "gate met"),
    ),
    "not leaked, gate 1 timed out": (rot(), False, TIMED_OUT, None),
    "not leaked, gate 2 timed out": (rot("promoted"), False, TIMED_OUT, None),
    "manual not leaked, timed out": (rot(mode="manual"), False, TIMED_OUT, None),
}


@pytest.mark.parametrize(
    ("rotation", "met", "now", "expected"), TICK_CASES.values(), ids=TICK_CASES.keys()
)
def test_tick(
    rotation: Rotation, met: bool, now: datetime, expected: tuple[str, bool, str] | None
) -> None:
    number = rotation.gate
    assert number is not None
    gate = status(number, () if met else ("i-late",), ("i-ok",))
    t = tick(rotation, gate, now)
    if expected is None:
        assert t is None
        return
    assert t is not None
    assert (t.action, t.forced, t.reason) == expected
    assert t.rotation.phase == {"promote": "promoted", "revoke": "done"}[t.action]
    assert t.rotation.phase_since == now
    assert t.stages == (
        {NEW: "current", OLD: "previous"} if t.action == "promote" else {OLD: "revoked"}
    )


@pytest.mark.parametrize("phase", FINAL)
def test_tick_final_phases(phase: str) -> None:
    r = rot(phase, leaked=True, timeout=LEAKED_GATE_TIMEOUT)
    assert tick(r, status(2, held=("i-ok",)), T0 + timedelta(days=30)) is None
    assert tick(r, None, T0 + timedelta(days=30)) is None


@pytest.mark.parametrize("phase", ACTIVE)
def test_tick_without_gate(phase: str) -> None:
    assert tick(leaked(phase), None, T0 + timedelta(days=30)) is None


# -- desired_labels ----------------------------------------------------------------------------

DESIRED_CASES: dict[str, tuple[dict[str, str], dict[str, str | None]]] = {
    "no versions": ({}, {CURRENT: None, PENDING: None, PREVIOUS: None, REVOKED: None}),
    "one current": ({OLD: "current"}, {CURRENT: OLD, PENDING: None, PREVIOUS: None, REVOKED: None}),
    "rotation started": (
        {OLDER: "previous", OLD: "current", NEW: "pending"},
        {CURRENT: OLD, PENDING: NEW, PREVIOUS: OLDER, REVOKED: None},
    ),
    "promoted: deprecated gets no label": (
        {OLDER: "deprecated", OLD: "previous", NEW: "current"},
        {CURRENT: NEW, PENDING: None, PREVIOUS: OLD, REVOKED: None},
    ),
    "done": (
        {OLDER: "deprecated", OLD: "revoked", NEW: "current"},
        {CURRENT: NEW, PENDING: None, PREVIOUS: None, REVOKED: OLD},
    ),
    "aborted": (
        {OLDER: "previous", OLD: "current", NEW: "revoked"},
        {CURRENT: OLD, PENDING: None, PREVIOUS: OLDER, REVOKED: NEW},
    ),
    "rolled back": (
        {OLDER: "deprecated", OLD: "current", NEW: "revoked"},
        {CURRENT: OLD, PENDING: None, PREVIOUS: None, REVOKED: NEW},
    ),
    "unknown stage gets no label": (
        {OLD: "current", NEW: "mystery"},
        {CURRENT: OLD, PENDING: None, PREVIOUS: None, REVOKED: None},
    ),
}


@pytest.mark.parametrize(("stages", "expected"), DESIRED_CASES.values(), ids=DESIRED_CASES.keys())
def test_desired_labels(stages: dict[str, str], expected: dict[str, str | None]) -> None:
    got = desired_labels(stages)
    assert got == expected
    assert tuple(got) == MANAGED_LABELS


def test_desired_labels_ignore_insertion_order() -> None:
    stages = {"b": "revoked", "a": "revoked", "c": "current", "d": "previous"}
    reordered = dict(reversed(list(stages.items())))
    assert desired_labels(stages) == desired_labels(reordered)


# -- next_label_op against a simulated Secrets Manager -----------------------------------------

Labels = dict[str, set[str]]


class SMError(Exception):
    """What SM would answer with InvalidParameterException / InvalidRequestException."""


def sm_apply(state: Labels, op: LabelOp) -> Labels:
    """UpdateSecretVersionStage as SM does it, on a version -> labels map (a new map)."""
    after = {vid: set(labels) for vid, labels in state.items()}
    holder = next((vid for vid, labels in after.items() if op.label in labels), None)
    if op.remove_from is not None and op.label not in after.get(op.remove_from, set()):
        raise SMError(f"{op.label} is not on {op.remove_from}")
    if op.move_to is None:
        if op.remove_from is None:
            raise SMError("neither MoveToVersionId nor RemoveFromVersionId")
        if op.label == CURRENT:
            raise SMError("AWSCURRENT can only be moved, never removed")
        after[op.remove_from].discard(op.label)
        return after
    if op.move_to not in after:
        raise SMError(f"no version {op.move_to}")
    if holder == op.move_to:
        raise SMError(f"{op.label} is already on {op.move_to} (a wasted call)")
    if holder is not None and op.remove_from != holder:
        raise SMError(f"{op.label} is on {holder}: RemoveFromVersionId must name it")
    if holder is not None:
        after[holder].discard(op.label)
    after[op.move_to].add(op.label)
    if op.label == CURRENT and holder is not None:
        # SM moves AWSPREVIOUS to the version AWSCURRENT came from.
        for labels in after.values():
            labels.discard(PREVIOUS)
        after[holder].add(PREVIOUS)
    return after


def describe(state: Labels) -> dict[str, list[str]]:
    """DescribeSecret's VersionIdsToStages (lists, in no particular order)."""
    return {vid: sorted(labels, reverse=True) for vid, labels in state.items()}


def holders(state: Labels) -> dict[str, str | None]:
    return {
        label: next((vid for vid, labels in state.items() if label in labels), None)
        for label in MANAGED_LABELS
    }


def check_invariants(state: Labels) -> None:
    for label in MANAGED_LABELS:
        assert sum(label in labels for labels in state.values()) <= 1, (label, state)
    assert sum(CURRENT in labels for labels in state.values()) == 1, state


def converge(state: Labels, desired: Mapping[str, str | None]) -> tuple[Labels, list[LabelOp]]:
    ops: list[LabelOp] = []
    check_invariants(state)
    while (op := next_label_op(describe(state), desired)) is not None:
        ops.append(op)
        assert len(ops) <= 6, ops
        assert not (op.label == CURRENT and op.move_to is None), op
        state = sm_apply(state, op)
        check_invariants(state)
    return state, ops


def test_simulator_moves_previous_with_current() -> None:
    state = {OLDER: {PREVIOUS}, OLD: {CURRENT}, NEW: {PENDING}}
    assert sm_apply(state, LabelOp(CURRENT, NEW, OLD)) == {
        OLDER: set(),
        OLD: {PREVIOUS},
        NEW: {PENDING, CURRENT},
    }


@pytest.mark.parametrize(
    "op",
    [
        LabelOp(CURRENT, None, OLD),
        LabelOp(PENDING, None, OLD),
        LabelOp(CURRENT, NEW, None),
        LabelOp(CURRENT, NEW, NEW),
        LabelOp(PENDING, OLD, None),
        LabelOp(REVOKED, "v-missing", None),
        LabelOp(PREVIOUS, None, None),
    ],
)
def test_simulator_refuses_what_sm_refuses(op: LabelOp) -> None:
    with pytest.raises(SMError):
        sm_apply({OLD: {CURRENT}, NEW: {PENDING}}, op)


START = {OLDER: {PREVIOUS}, OLD: {CURRENT}, NEW: {PENDING}}
PROMOTED = {OLDER: set(), OLD: {PREVIOUS}, NEW: {CURRENT}}
DONE = {OLDER: set(), OLD: {REVOKED}, NEW: {CURRENT}}

# Each case: SM's labels before, the versions' stages after the transition, the number of calls.
LABEL_CASES: dict[str, tuple[Labels, dict[str, str], int]] = {
    "start: new already pending": (
        START,
        {OLDER: "previous", OLD: "current", NEW: "pending"},
        0,
    ),
    "start: label the new version pending": (
        {OLDER: {PREVIOUS}, OLD: {CURRENT}, NEW: set()},
        {OLDER: "previous", OLD: "current", NEW: "pending"},
        1,
    ),
    "promote": (START, {OLDER: "deprecated", OLD: "previous", NEW: "current"}, 2),
    "promote, first rotation (no older version)": (
        {OLD: {CURRENT}, NEW: {PENDING}},
        {OLD: "previous", NEW: "current"},
        2,
    ),
    "promote resumed after a crash (current moved, pending left)": (
        {OLDER: set(), OLD: {PREVIOUS}, NEW: {CURRENT, PENDING}},
        {OLDER: "deprecated", OLD: "previous", NEW: "current"},
        1,
    ),
    "revoke": (PROMOTED, {OLDER: "deprecated", OLD: "revoked", NEW: "current"}, 2),
    "abort": (START, {OLDER: "previous", OLD: "current", NEW: "revoked"}, 2),
    "abort, first rotation": (
        {OLD: {CURRENT}, NEW: {PENDING}},
        {OLD: "current", NEW: "revoked"},
        2,
    ),
    "rollback after promote": (
        PROMOTED,
        {OLDER: "deprecated", OLD: "current", NEW: "revoked"},
        3,
    ),
    "rollback after promote, pending never removed": (
        {OLDER: set(), OLD: {PREVIOUS}, NEW: {CURRENT, PENDING}},
        {OLDER: "deprecated", OLD: "current", NEW: "revoked"},
        4,
    ),
    "rollback after revoke": (DONE, {OLDER: "deprecated", OLD: "current", NEW: "revoked"}, 3),
    "an earlier revoked label is cleared": (
        {OLDER: {REVOKED}, OLD: {PREVIOUS}, NEW: {CURRENT}},
        {OLDER: "deprecated", OLD: "previous", NEW: "current"},
        1,
    ),
}


@pytest.mark.parametrize(
    ("before", "stages", "calls"), LABEL_CASES.values(), ids=LABEL_CASES.keys()
)
def test_next_label_op_converges(before: Labels, stages: dict[str, str], calls: int) -> None:
    desired = desired_labels(stages)
    after, ops = converge(before, desired)
    assert holders(after) == desired
    assert len(ops) == calls
    # Idempotent: nothing left to do once there, whatever the order SM lists labels in.
    assert next_label_op(describe(after), desired) is None
    assert next_label_op({v: sorted(ls) for v, ls in after.items()}, desired) is None


@pytest.mark.parametrize(
    ("before", "stages", "calls"), LABEL_CASES.values(), ids=LABEL_CASES.keys()
)
def test_next_label_op_moves_current_first(
    before: Labels, stages: dict[str, str], calls: int
) -> None:
    desired = desired_labels(stages)
    _, ops = converge(before, desired)
    current_ops = [i for i, op in enumerate(ops) if op.label == CURRENT]
    holder = holders(before)[CURRENT]
    if holder == desired[CURRENT]:
        assert current_ops == []
    else:
        assert current_ops == [0]
        assert ops[0] == LabelOp(CURRENT, desired[CURRENT], holder)


def test_next_label_op_promote_plan() -> None:
    desired = desired_labels({OLDER: "deprecated", OLD: "previous", NEW: "current"})
    _, ops = converge(START, desired)
    assert ops == [LabelOp(CURRENT, NEW, OLD), LabelOp(PENDING, None, NEW)]


def test_next_label_op_rollback_plan() -> None:
    desired = desired_labels({OLDER: "deprecated", OLD: "current", NEW: "revoked"})
    _, ops = converge(DONE, desired)
    assert ops == [
        LabelOp(CURRENT, OLD, NEW),
        LabelOp(REVOKED, NEW, OLD),
        LabelOp(PREVIOUS, None, NEW),
    ]


def test_next_label_op_never_removes_current() -> None:
    # No version is staged current (say the stages are mid-update): AWSCURRENT stays put.
    desired = desired_labels({OLD: "revoked", NEW: "pending"})
    assert desired[CURRENT] is None
    after, ops = converge({OLD: {CURRENT}, NEW: set()}, desired)
    assert all(op.label != CURRENT for op in ops)
    assert holders(after)[CURRENT] == OLD
    assert next_label_op({OLD: [CURRENT]}, {CURRENT: None}) is None


def test_next_label_op_places_current_on_a_secret_without_one() -> None:
    assert next_label_op({NEW: []}, desired_labels({NEW: "current"})) == LabelOp(CURRENT, NEW, None)


def test_next_label_op_ignores_unmanaged_labels() -> None:
    actual = {OLD: ["AWSCURRENT", "team-label"], NEW: ["other"]}
    assert next_label_op(actual, desired_labels({OLD: "current", NEW: "deprecated"})) is None


def test_next_label_op_every_intermediate_state_recovers() -> None:
    """A crash after any call: the next describe + plan still finishes the job."""
    for before, stages, _ in LABEL_CASES.values():
        desired = desired_labels(stages)
        _, ops = converge(before, desired)
        state = before
        for op in ops:
            state = sm_apply(state, op)
            resumed, _ = converge(state, desired)
            assert holders(resumed) == desired


# -- parse_duration ----------------------------------------------------------------------------

DURATIONS = {
    "seconds": ("90s", timedelta(seconds=90)),
    "minutes": ("15m", timedelta(minutes=15)),
    "hours": ("2h", timedelta(hours=2)),
    "days": ("1d", timedelta(days=1)),
    "plain seconds": ("120", timedelta(seconds=120)),
    "fraction": ("1.5h", timedelta(minutes=90)),
    "upper case and blanks": (" 15M ", timedelta(minutes=15)),
    "lower bound": ("10", timedelta(seconds=10)),
    "lower bound with unit": ("10s", timedelta(seconds=10)),
    "upper bound": ("30d", timedelta(days=30)),
    "upper bound in seconds": ("2592000", timedelta(days=30)),
    "upper bound in hours": ("720h", timedelta(days=30)),
}


@pytest.mark.parametrize(("raw", "expected"), DURATIONS.values(), ids=DURATIONS.keys())
def test_parse_duration(raw: str, expected: timedelta) -> None:
    assert parse_duration(raw) == expected


OUT_OF_BOUNDS = ["9", "9s", "9.99s", "0", "0m", "2592001", "31d", "721h"]
GARBAGE = [
    *("", "   ", "abc", "m", "d", "1x", "1w", "15 minutes", "1h30m", "h1", "1,5h", "--1s"),
    *("-5m", "nan", "inf", "1e3", "1_000", "1 h", "1e1m"),  # only digits, a point and a unit
]


@pytest.mark.parametrize("raw", OUT_OF_BOUNDS)
def test_parse_duration_out_of_bounds(raw: str) -> None:
    with pytest.raises(InvalidInput, match="between 10 seconds and 30 days"):
        parse_duration(raw)


@pytest.mark.parametrize("raw", GARBAGE)
def test_parse_duration_garbage(raw: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(f"gate timeout {raw!r}: use e.g. 90s")):
        parse_duration(raw)


def test_transition_moves_versions() -> None:
    r = rot()
    assert not Transition("pause", r, {}).moves_versions
    assert Transition("abort", r, {NEW: "revoked"}).moves_versions


def test_next_label_op_reads_a_label_listed_twice_as_one_holder() -> None:
    # Seen from moto after a put into an adopted secret: AWSCURRENT twice on the new version,
    # and AWSPREVIOUS on a version kmsd does not know.
    actual = {NEW: [CURRENT, CURRENT], OLD: [PREVIOUS]}
    desired = desired_labels({NEW: "current"})
    assert next_label_op(actual, desired) == LabelOp(PREVIOUS, None, OLD)
    assert next_label_op({NEW: [CURRENT, CURRENT]}, desired) is None


def test_next_label_op_takes_a_label_off_a_second_holder() -> None:
    # A label on two versions (a client outside kmsd): moved onto the wanted one from the other.
    desired = desired_labels({NEW: "current", OLD: "previous"})
    assert next_label_op({NEW: [CURRENT], OLD: [CURRENT]}, desired) == LabelOp(CURRENT, NEW, OLD)
