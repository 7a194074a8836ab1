"""kmsctl adoption [forget] and rotate status against a real kmsd: observers apart, a gone
instance forgotten, and a waiting gate that tells the operator what to do."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Identity
from tests.e2e.harness import DEADLINE_S, Ops, Replica, call, kmsctl, login, wait_until

pytestmark = pytest.mark.e2e

PATH = "prod/pay/eu"


def _report(kmsd: Replica, token: str, instance: str, held: dict[str, str]) -> None:
    """One short poll, as an agent that then dies would leave behind."""
    body: dict[str, Any] = {
        "path": PATH,
        "path_version": 0,
        "instance_id": instance,
        "held": held,
        "versions": {name: [version] for name, version in held.items()},
    }
    call(kmsd.addr, "POST", "/v1/watch?timeout=0", body, token)


def _run(kmsd: Replica, admin: Identity, moto: str, *args: str) -> tuple[int, str, str]:
    proc = kmsctl(kmsd.addr, admin, moto, *args)
    out, err = proc.communicate(timeout=DEADLINE_S)
    return proc.returncode, out, err


def test_adoption_forget_and_the_gate_hints(
    kmsd: Replica, admin: Identity, moto_endpoint: str
) -> None:
    ops = Ops(kmsd, admin, moto_endpoint)
    ops("node", "create", PATH, "--parents")
    old = ops.put("prod/pay", "db", {"v": 1})
    token = login(kmsd.addr, admin, moto_endpoint)
    _report(kmsd, token, "i-gone", {"db": old})
    _report(kmsd, token, "i-gone-too", {"db": old})
    watch = kmsctl(kmsd.addr, admin, moto_endpoint, "watch", PATH, "--timeout", "60")
    try:
        wait_until(lambda: kmsd.held_polls() == 1, "the watch's poll")
        observer = f"kmsctl-{watch.pid}"

        # The watch is an observer: listed apart, not among the instances.
        text = ops("adoption", PATH)
        instances, _, observers = text.partition("observers (")
        assert "i-gone" in instances
        assert observer not in instances
        assert observer in observers
        doc = ops.json("adoption", PATH)
        assert doc["counts"]["observers"] == 1
        assert [o["instance_id"] for o in doc["observers"]] == [observer]

        # A rotation waits for the gone owners, and says what can be done about them.
        started = ops.json("rotate", "start", "prod/pay", "db", "--value", '{"v": 2}')
        status = ops("rotate", "status", str(started["id"]))
        waiting = [line for line in status.splitlines() if "waiting for" in line]
        assert {line.split("waiting for ")[1].split()[0] for line in waiting} == {
            "i-gone",
            "i-gone-too",
        }
        assert all(" stale at " in line for line in waiting), status
        assert f"kmsctl rotate advance {started['id']} --force" in status
        assert f"kmsctl adoption forget {PATH} i-gone" in status
        assert observer not in status

        # Forget them: one line in text, the answer in JSON; an unknown one is one error line.
        out = ops("adoption", "forget", PATH, "i-gone")
        assert out.splitlines() == [
            f"forgot instance i-gone at {PATH}: it no longer counts in adoption or rotation "
            "gates until it polls again"
        ]
        doc = json.loads(ops("adoption", "forget", PATH, "i-gone-too", "--output", "json"))
        assert doc == {"path": PATH, "instance_id": "i-gone-too", "forgotten": True}
        code, out, err = _run(kmsd, admin, moto_endpoint, "adoption", "forget", PATH, "i-gone")
        assert code == 1
        assert out == ""
        assert len(err.splitlines()) == 1
        assert err.startswith("kmsctl: ")
        assert "(404)" in err
        assert "Traceback" not in err

        left = ops.json("adoption", PATH)
        assert left["instances"] == []
        after = ops("rotate", "status", str(started["id"]))
        assert "waiting for i-gone" not in after
    finally:
        watch.kill()
        watch.communicate(timeout=DEADLINE_S)


def test_adoption_without_a_verb_still_shows(
    kmsd: Replica, admin: Identity, moto_endpoint: str
) -> None:
    ops = Ops(kmsd, admin, moto_endpoint)
    ops("node", "create", PATH, "--parents")
    assert ops("adoption", PATH).startswith(f"{PATH}: 0 instance(s)")
    doc = json.loads(ops("adoption", "--output", "json", PATH))
    assert doc["path"] == PATH
    for wrong in (("adoption", "forget", PATH), ("adoption", PATH, "extra")):
        code, _, err = _run(kmsd, admin, moto_endpoint, *wrong)
        assert code == 1
        assert err.startswith("kmsctl: usage: kmsctl adoption")
