"""Rotations end to end: two kmsd replicas, the real PostgreSQL, moto, and five agent processes
(an owner application with three instances, a referencing application with two)."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Identity
from tests.e2e.harness import (
    DEADLINE_S,
    AgentProcess,
    Ops,
    Replica,
    credentials_file,
    wait_until,
)

pytestmark = pytest.mark.e2e

OWNER, REFERENCER = "prod/shop", "prod/billing"
OLD, NEW = {"password": "old-value"}, {"password": "new-value"}
HOLD_S = 3  # kmsd's longest hold: instances silent for 3 holds (9 s) are stale


@pytest.fixture
def fast_env(env: dict[str, str]) -> dict[str, str]:
    return {
        **env,
        "KMSD_WATCH_MAX_HOLD": str(HOLD_S),
        "KMSD_WATCH_DEFAULT_HOLD": str(HOLD_S),
        "KMSD_SCHEDULER_TICK": "0.2",
        "KMSD_ROTATION_TICK": "0.2",
        "KMSD_WEBHOOK_ALLOWED_CIDRS": "127.0.0.0/8",  # the test's receiver is on loopback
    }


@dataclass
class Fleet:
    """kmsd replicas (A leads the scheduler; agents talk to B) and the agents."""

    leader: Replica
    follower: Replica
    ops: Ops
    owners: list[AgentProcess] = field(default_factory=list)
    referencers: list[AgentProcess] = field(default_factory=list)

    @property
    def agents(self) -> list[AgentProcess]:
        return [*self.owners, *self.referencers]

    def status(self, rotation_id: int) -> Any:
        return self.ops.json("rotate", "status", str(rotation_id))


def start_agent(
    fleet_dir: Path, name: str, path: str, host: Identity, kmsd: Replica, moto: str
) -> AgentProcess:
    workdir = fleet_dir / name
    workdir.mkdir(parents=True, exist_ok=True)
    creds = workdir / "credentials"
    credentials_file(creds, host, 0o600)
    return AgentProcess(
        kmsd_addr=kmsd.addr,
        moto_endpoint=moto,
        paths=[path],
        workdir=workdir,
        args=[
            *("--credentials", "file", "--credentials-file", str(creds)),
            *("--instance-id", name),
        ],
    )


@pytest.fixture
def fleet(
    fast_env: dict[str, str],
    admin: Identity,
    make_user: Any,
    moto_endpoint: str,
    tmp_path: Path,
) -> Iterator[Fleet]:
    leader = Replica(fast_env, tmp_path)
    wait_until(lambda: leader.gauge("kmsd_scheduler_leader") == 1, "A to lead the scheduler")
    follower = Replica(fast_env, tmp_path)
    ops = Ops(follower, admin, moto_endpoint)
    fleet = Fleet(leader, follower, ops)
    try:
        ops("node", "create", OWNER, "--parents")
        ops("node", "create", REFERENCER, "--parents")
        ops.put(OWNER, "db", OLD)
        ops("share", OWNER, "db", "--to", REFERENCER)
        ops("ref", "create", REFERENCER, "shop-db", "--target", f"{OWNER}/db")
        suffix = tmp_path.name[-10:]
        shop_host, billing_host = make_user(f"shop-{suffix}"), make_user(f"billing-{suffix}")
        ops("app", "bind", OWNER, "--role", shop_host.arn)
        ops("app", "bind", REFERENCER, "--role", billing_host.arn)
        for i in range(1, 4):
            fleet.owners.append(
                start_agent(tmp_path, f"shop-{i}", OWNER, shop_host, follower, moto_endpoint)
            )
        for i in range(1, 3):
            fleet.referencers.append(
                start_agent(
                    tmp_path, f"billing-{i}", REFERENCER, billing_host, follower, moto_endpoint
                )
            )
        for agent in fleet.agents:
            agent.wait_ready()

        def reported() -> set[str]:
            return {
                i["instance_id"]
                for path in (OWNER, REFERENCER)
                for i in ops.json("adoption", path)["instances"]
            }

        # kmsd knows an instance from its first poll's report: wait until all five are known.
        names = {a.log.parent.name for a in fleet.agents}
        wait_until(lambda: reported() == names, "every agent's first report")
        yield fleet
    finally:
        for agent in fleet.agents:
            agent.stop()
        follower.stop()
        leader.stop()


class Watcher:
    """Reads every agent in a loop while a rotation runs: what each ever served."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.failures: list[str] = []
        self.served: dict[str, set[str]] = {}
        self.pending_seen: dict[str, bool] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=DEADLINE_S)

    def _run(self) -> None:
        while not self._stop.is_set():
            for agent in self.fleet.agents:
                name = "db" if agent in self.fleet.owners else "shop-db"
                who = agent.log.parent.name
                current = agent.get(f"/v1/secrets/{name}")
                if current.status != 200:  # never without a usable current value
                    self.failures.append(f"{who}: {current.status} {current.body}")
                    continue
                self.served.setdefault(who, set()).add(current.body["value"]["password"])
                pending = agent.get(f"/v1/secrets/{name}?stage=pending").status == 200
                self.pending_seen[who] = self.pending_seen.get(who, False) or pending


def serving(agent: AgentProcess, name: str) -> str:
    return str(agent.value(name)["password"])


def all_serve(fleet: Fleet, password: str) -> bool:
    return all(serving(a, "db") == password for a in fleet.owners) and all(
        serving(a, "shop-db") == password for a in fleet.referencers
    )


class Hooks(ThreadingHTTPServer):
    """A webhook receiver: keeps every delivery (headers and body) in arrival order."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        super().__init__(("127.0.0.1", 0), _HookHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _HookHandler(BaseHTTPRequestHandler):
    server: Hooks

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.got.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()


def test_a_full_auto_rotation_reaches_every_agent_and_revokes_the_old_value(
    fleet: Fleet, sm_client: Any
) -> None:
    hooks = Hooks()
    try:
        key = fleet.ops.json("app", "webhook", OWNER, "--url", hooks.url)["hmac_key"]
        with Watcher(fleet) as watcher:
            rot = fleet.ops.json(
                "rotate", "start", OWNER, "db", "--value", json.dumps(NEW), "--mode", "auto"
            )
            wait_until(lambda: fleet.status(rot["id"])["phase"] == "done", "the rotation to end")
            wait_until(lambda: all_serve(fleet, "new-value"), "every agent to serve the new value")
        wait_until(lambda: len(hooks.got) == 3, "three webhook deliveries")
    finally:
        hooks.shutdown()
        hooks.server_close()
    assert watcher.failures == []  # at no moment an agent without a usable current value
    owners = {a.log.parent.name for a in fleet.owners}
    assert all(watcher.pending_seen[o] for o in owners)  # the owner was offered pending...
    assert not any(
        watcher.pending_seen[r.log.parent.name] for r in fleet.referencers
    )  # ...they not
    assert all(watcher.served[w] <= {"old-value", "new-value"} for w in watcher.served)

    doc = fleet.status(rot["id"])
    stages = {v["version_id"]: v["stage"] for v in doc["versions"]}
    assert stages[rot["old_version"]] == "revoked"
    assert stages[rot["new_version"]] == "current"
    arn = fleet.ops.json("effective", OWNER)["secrets"][0]["sm_arn"]
    labels = sm_client.describe_secret(SecretId=arn)["VersionIdsToStages"]
    # As sets: moto may list a label twice on one version (kmsd reads that as one holder).
    assert set(labels[rot["old_version"]]) == {"KMSD_REVOKED"}
    assert set(labels[rot["new_version"]]) == {"AWSCURRENT"}

    actions = []
    for headers, body in hooks.got:
        mac = hmac.new(
            key.encode(), headers["X-Kmsd-Timestamp"].encode() + b"." + body, hashlib.sha256
        )
        assert headers["X-Kmsd-Signature"] == "sha256=" + mac.hexdigest()
        actions.append(json.loads(body)["action"])
    assert actions == ["start", "promote", "revoke"]


def test_a_stopped_owner_holds_gate_1_is_named_then_listed_stale_and_force_is_audited(
    fleet: Fleet,
) -> None:
    gone = fleet.owners[2]
    gone.stop()
    rot = fleet.ops.json("rotate", "start", OWNER, "db", "--value", json.dumps(NEW))

    def waiting_for() -> list[str]:
        return [i["instance_id"] for i in fleet.status(rot["id"])["gate"]["waiting"]]

    wait_until(lambda: waiting_for() == ["shop-3"], "gate 1 to wait for the stopped owner only")
    text = fleet.ops("rotate", "status", str(rot["id"]))
    assert "waiting for shop-3" in text
    assert "1/3 live" not in text  # two of three hold the pending version
    assert "2/3 live" in text

    forced = fleet.ops.json("rotate", "advance", str(rot["id"]), "--force")
    assert forced["phase"] == "promoted"
    assert (forced["events"][-1]["forced"], forced["events"][-1]["detail"]["waiting"]) == (
        True,
        ["shop-3"],
    )
    audit = fleet.ops.json("audit", "list", "--path", OWNER)
    assert any(
        r["action"] == "rotation.command" and r["target"].endswith("advance (force)")
        for r in audit["rows"]
    )
    # Three missed holds later the stopped owner is stale: listed, not counted, gate 2 met.
    wait_until(
        lambda: [i["instance_id"] for i in fleet.status(rot["id"])["gate"]["stale"]] == ["shop-3"],
        "shop-3 to be listed stale",
    )
    gate = fleet.status(rot["id"])["gate"]
    assert gate["met"] is True
    assert "stale" in fleet.ops("rotate", "status", str(rot["id"]))
    assert fleet.ops.json("rotate", "advance", str(rot["id"]))["phase"] == "done"


def test_abort_then_rollbacks_after_promotion_and_after_revocation(fleet: Fleet) -> None:
    rot = fleet.ops.json("rotate", "start", OWNER, "db", "--value", json.dumps(NEW))
    wait_until(
        lambda: all(a.get("/v1/secrets/db?stage=pending").status == 200 for a in fleet.owners),
        "owners to hold the pending version",
    )
    fleet.ops("rotate", "abort", str(rot["id"]))
    wait_until(
        lambda: all(a.get("/v1/secrets/db?stage=pending").status == 404 for a in fleet.owners),
        "owners to drop the pending version",
    )
    assert all_serve(fleet, "old-value")

    for revoke in (False, True):
        rot = fleet.ops.json("rotate", "start", OWNER, "db", "--value", json.dumps(NEW))
        fleet.ops("rotate", "advance", str(rot["id"]), "--force")
        wait_until(lambda: all_serve(fleet, "new-value"), "every agent to serve the new value")
        if revoke:
            fleet.ops("rotate", "advance", str(rot["id"]), "--force")
            wait_until(
                lambda: all(
                    a.get("/v1/secrets/db?stage=previous").status == 404 for a in fleet.owners
                ),
                "the old version to be revoked everywhere",
            )
        back = fleet.ops.json("rotate", "rollback", str(rot["id"]))
        assert back["phase"] == "rolled_back"
        wait_until(lambda: all_serve(fleet, "old-value"), "every agent to serve the old value")


def test_the_other_replica_resumes_a_rotation_when_its_driver_is_killed(fleet: Fleet) -> None:
    late = fleet.owners[2]
    late.stop()  # gate 1 will wait for it
    rot = fleet.ops.json(
        "rotate", "start", OWNER, "db", "--value", json.dumps(NEW), "--mode", "auto"
    )
    wait_until(
        lambda: (
            [i["instance_id"] for i in fleet.status(rot["id"])["gate"]["waiting"]] == ["shop-3"]
        ),
        "the rotation to wait at gate 1",
    )
    fleet.leader.proc.send_signal(signal.SIGKILL)  # the replica driving it, mid-gate
    fleet.leader.proc.wait(timeout=DEADLINE_S)
    wait_until(lambda: fleet.follower.gauge("kmsd_scheduler_leader") == 1, "B to take the lead")
    late.start()  # the straggler comes back and fetches the pending version
    wait_until(lambda: fleet.status(rot["id"])["phase"] == "done", "B to finish the rotation")
    wait_until(lambda: all_serve(fleet, "new-value"), "every agent to serve the new value")
    actors = [e["actor"] for e in fleet.status(rot["id"])["events"]]
    assert actors[1:] == ["kmsd", "kmsd"]  # promoted and revoked by the driver, not forced
