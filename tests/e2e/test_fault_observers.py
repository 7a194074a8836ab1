"""Observers do not hold rotation gates, end to end: a running ``kmsctl watch`` and one that has
exited watch a path whose only serving instance is one kmsagent; an auto rotation finishes in
seconds (long before the watches could go stale), and ``kmsctl adoption forget`` drops an
instance, audited."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Identity
from tests.e2e.faults import holders, host_agent, sm_labels, unique_app, wait_for
from tests.e2e.harness import DEADLINE_S, AgentProcess, Ops, Replica, kmsctl

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

APP = unique_app()  # moto lives per session: an SM name of its own
# kmsd's longest hold: an instance silent for three of them (30 s) is stale. A rotation that
# waited for either watch would take that long; one that does not, a few seconds.
HOLD_S = 10


@pytest.fixture
def kmsd(env: dict[str, str], tmp_path: Path) -> Iterator[Replica]:
    replica = Replica(
        {
            **env,
            "KMSD_WATCH_MAX_HOLD": str(HOLD_S),
            "KMSD_WATCH_DEFAULT_HOLD": str(HOLD_S),
            "KMSD_SCHEDULER_TICK": "0.2",
            "KMSD_ROTATION_TICK": "0.2",
        },
        tmp_path,
    )
    try:
        yield replica
    finally:
        replica.stop()


def ids(rows: list[Any]) -> set[str]:
    return {r["instance_id"] if isinstance(r, dict) else str(r) for r in rows}


def test_watches_do_not_hold_a_gate_and_a_forgotten_instance_is_gone_and_audited(
    kmsd: Replica,
    admin: Identity,
    moto_endpoint: str,
    make_user: Any,
    sm_client: Any,
    tmp_path: Path,
) -> None:
    ops = Ops(kmsd, admin, moto_endpoint)
    ops("node", "create", APP, "--parents")
    old = ops.put(APP, "db", {"password": "old"})
    host: Identity = make_user(f"obs-{tmp_path.name[-12:]}")
    ops("app", "bind", APP, "--role", host.arn)
    agent: AgentProcess | None = None
    running = kmsctl(kmsd.addr, admin, moto_endpoint, "watch", APP, "--timeout", str(HOLD_S))
    try:
        agent = host_agent(host, kmsd, moto_endpoint, tmp_path / "agent", APP, "shop-1")
        agent.wait_ready()
        # One that has exited: a single short look (path_version 0 is answered at once).
        exited = kmsctl(
            kmsd.addr,
            admin,
            moto_endpoint,
            *("watch", APP, "--version", "0", "--once", "--instance-id", "kmsctl-exited"),
        )
        _, err = exited.communicate(timeout=DEADLINE_S)
        assert exited.returncode == 0, err
        watching = {f"kmsctl-{running.pid}", "kmsctl-exited"}

        def adoption() -> Any:
            return ops.json("adoption", APP)

        wait_for(
            lambda: watching <= ids(adoption().get("observers", [])),
            f"both watches listed as observers: {adoption()}",
            10,
        )
        wait_for(lambda: "shop-1" in ids(adoption()["instances"]), "the agent's report", 10)
        doc = adoption()
        assert not watching & ids(doc["instances"]), doc  # observers are listed apart
        assert "shop-1" not in ids(doc["observers"]), doc

        started = time.monotonic()
        rotate = kmsctl(
            kmsd.addr,
            admin,
            moto_endpoint,
            *("rotate", "start", APP, "db", "--mode", "auto", "--follow"),
            *("--value", json.dumps({"password": "new"})),
        )
        out, err = rotate.communicate(timeout=3 * HOLD_S)
        took = time.monotonic() - started
        assert rotate.returncode == 0, err
        assert took < HOLD_S, f"the rotation took {took:.1f} s: a watch held a gate?\n{out}"
        assert running.poll() is None, "kmsctl watch stopped during the rotation"

        (rot,) = ops.json("rotate", "list", "--path", APP)["rotations"]
        assert rot["phase"] == "done", rot
        status = ops.json("rotate", "status", str(rot["id"]))
        stages = {v["version_id"]: v["stage"] for v in status["versions"]}
        new = status["new_version"]
        assert (stages[old], stages[new]) == ("revoked", "current"), stages
        arn = ops.json("effective", APP)["secrets"][0]["sm_arn"]
        assert holders(sm_labels(sm_client, arn), "AWSCURRENT") == [new]
        wait_for(lambda: agent.value("db") == {"password": "new"}, "the agent's new value", 10)

        forgot = ops.json("adoption", "forget", APP, "kmsctl-exited")
        assert forgot, forgot
        wait_for(
            lambda: (
                "kmsctl-exited"
                not in ids(adoption()["instances"]) | ids(adoption().get("observers", []))
            ),
            "the forgotten instance to be gone from adoption",
            5,
        )
        # The running watch is still known: forgetting one instance leaves the others.
        assert f"kmsctl-{running.pid}" in ids(adoption().get("observers", []))

        def forgets() -> list[Any]:
            rows = ops.json("audit", "list", "--action", "adoption.forget")["rows"]
            return [r for r in rows if r["action"] == "adoption.forget"]

        # A change is audited as an attempt before it runs and with its outcome after.
        wait_for(
            lambda: any(r["outcome"] == "allowed" for r in forgets()),
            f"an allowed adoption.forget row in the audit trail: {forgets()}",
            5,
        )
        (done,) = [r for r in forgets() if r["outcome"] == "allowed"]
        assert done["principal"] == admin.arn, done
        assert "kmsctl-exited" in done["target"], done
        assert done["target"].startswith(APP), done
        text = ops("audit", "list")
        assert done["action"] in text
    finally:
        running.send_signal(signal.SIGTERM)
        running.communicate(timeout=DEADLINE_S)  # and closes its pipes
        if agent is not None:
            agent.stop()
