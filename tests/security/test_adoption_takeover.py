"""Class 5, adoption takeover: a host cannot report for another host's instance.

An instance's adoption slot (path, instance_id) belongs to the principal that first reported
it, live or stale; only an operator's ``adoption forget`` frees it. Here the victim and the
attacker both have read on the path. The attacker polls with the victim's ``instance_id`` and
claims it holds a rotation's pending version: its report must never land (the slot keeps the
victim's principal and holdings) and the rotation's gate must not move.

Reports are flushed in batches; each case waits until a report the attacker sent *after* the
hostile one (for an instance of its own, on another application) has landed, so the hostile
one was flushed too.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from tests.security.conftest import APP, Target
from tests.security.wire import Req, exchange, until

KLASS = "5 adoption takeover"
SECRET = "adopt"
MARKS = "sec/marks"  # where the attacker's own marker reports go: outside APP's gates


@dataclass(frozen=True)
class Takeover:
    id: str
    victim_stale: bool  # the victim went silent long ago before the attacker reports
    victim_moves: bool  # the victim reports new holdings just before the attacker (one batch)
    expected: str = "the slot keeps the victim's principal and latest holdings; the gate follows"


CASES = [
    Takeover("claim-live-slot", victim_stale=False, victim_moves=False),
    Takeover("claim-stale-slot", victim_stale=True, victim_moves=False),
    Takeover("drown-the-victims-report", victim_stale=False, victim_moves=True),
]


@dataclass
class Rotation:
    id: int
    current: str
    pending: str


@pytest.fixture(scope="module")
def rotation(target: Target) -> Rotation:
    """A manual rotation of APP/adopt waiting at its first gate (owners must hold pending)."""
    target.call("PUT", f"/v1/nodes/{MARKS}?parents=true")
    attacker = target.identities["attacker"].arn
    target.call(
        "POST", "/v1/bindings", {"principal": attacker, "path": MARKS, "permission": "read"}
    )
    first = target.call("PUT", f"/v1/secrets/{APP}/{SECRET}", {"kind": "json", "value": {"a": 1}})
    rot = target.call(
        "POST", "/v1/rotations", {"path": APP, "name": SECRET, "value": {"a": 2}, "mode": "manual"}
    )
    doc = target.call("GET", f"/v1/rotations/{rot['id']}")
    pending = next(v["version_id"] for v in doc["versions"] if v["stage"] == "pending")
    return Rotation(rot["id"], first["version_id"], pending)


def poll(target: Target, token: str, instance: str, holds: list[str], path: str = APP) -> int:
    body = {
        "path": path,
        "path_version": 0,  # differs from the path's: answered at once
        "instance_id": instance,
        "app_process_ids": ["1"],
        "held": {SECRET: holds[0]},
        "versions": {SECRET: holds},
    }
    auth = ("Authorization", "Bearer {" + token + "}")
    req = Req("POST", "/v1/watch?timeout=0", headers=[auth], body=body)
    return exchange(target.kmsd.port, req.render(target.tokens)).status


def slot(target: Target, instance: str, path: str = APP) -> Any:
    rows = target.db(
        "SELECT principal, held::text AS held, versions::text AS versions FROM adoption"
        " WHERE path = $1 AND instance_id = $2",
        path,
        instance,
    )
    return dict(rows[0]) if rows else None


def gate(target: Target, rotation: Rotation) -> Any:
    g = target.call("GET", f"/v1/rotations/{rotation.id}")["gate"]
    return g["counts"], sorted(i["instance_id"] for i in g["held"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused(target: Target, rotation: Rotation, case: Takeover) -> None:
    victim = f"i-victim-{case.id}"
    truth = [rotation.current]  # what the victim really holds, as it last said
    assert poll(target, "victim", victim, truth) == 200
    assert until(lambda: slot(target, victim) is not None), "the victim's report never landed"
    if case.victim_stale:
        target.db(
            "UPDATE adoption SET last_seen = now() - interval '1 day' WHERE instance_id = $1",
            victim,
        )
    gate_before = gate(target, rotation)
    if case.victim_moves:  # it now holds the pending version too; the attacker says otherwise
        truth = [rotation.pending, rotation.current]
        assert poll(target, "victim", victim, truth) == 200
        hostile = poll(target, "attacker", victim, ["v-forged"])
    else:  # the attacker says the victim's instance holds the pending version
        hostile = poll(target, "attacker", victim, [rotation.pending, rotation.current])
    marker = f"i-attacker-own-{uuid.uuid4().hex[:6]}"
    assert poll(target, "attacker", marker, ["v-own"], MARKS) == 200
    assert until(lambda: slot(target, marker, MARKS) is not None), "a later report never landed"

    after = slot(target, victim)
    held_ids = gate(target, rotation)[1]
    problems = []
    if after["principal"] != target.identities["victim"].arn:
        problems.append(f"the slot is now {after['principal']}'s")
    if json.loads(after["versions"]) != {SECRET: truth}:
        problems.append(f"the slot says {after['versions']}, the victim said {truth}")
    if not case.victim_moves and gate(target, rotation) != gate_before:
        problems.append(f"the gate moved: {gate_before} -> {gate(target, rotation)}")
    if case.victim_moves and victim not in held_ids:
        problems.append(f"the gate does not count the victim's real holding: {held_ids}")
    target.outcome(
        KLASS,
        case.id,
        held=not problems,
        accepted=bool(problems),
        detail=f"attacker's poll {hostile}; {problems}",
    )
    assert not problems, problems
