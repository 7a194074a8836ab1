"""Writes under faults, end to end: SM's answer lost, SM hanging, PostgreSQL cut between the SM
write and the metadata, SM labels moved behind kmsd's back.

kmsd reaches moto through a ``Relay`` (and, where PostgreSQL is cut, its database through
another); the test checks the outcome where it lives: PostgreSQL's stages (GET /v1/secrets),
SM's labels straight from moto, the outbox table, and what a kmsagent serves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Identity
from tests.e2e.faults import (
    Postgres,
    Relay,
    amz_target,
    disagreements,
    dsn_through,
    health,
    holders,
    host_agent,
    pg_relay,
    pg_stages,
    put_json,
    request,
    sm_labels,
    sm_value,
    unique_app,
    wait_for,
)
from tests.e2e.harness import AgentProcess, Ops, Replica, login

pytestmark = pytest.mark.e2e

PUT_OP = "secretsmanager.PutSecretValue"
# Small reconciler settings: a pass every half second, intents resolved once a second old.
FAST = {
    "KMSD_RECONCILE_INTERVAL": "0.5",
    "KMSD_RECONCILE_MIN_AGE": "1",
    "KMSD_AWS_CONNECT_TIMEOUT": "1",
    "KMSD_AWS_READ_TIMEOUT": "3",
    "KMSD_AWS_CALL_TIMEOUT": "5",
    "KMSD_REPLICA_ID": "w1",
}
# Where the test looks at an intent left in doubt (and acknowledges a later write while it is),
# intents wait longer than a faulted PUT can take (the 5 s call bound) before the reconciler
# takes them.
HOLD_INTENTS = {"KMSD_RECONCILE_MIN_AGE": "8"}


@dataclass
class Rig:
    """One kmsd whose AWS endpoint is ``sm`` (a relay to moto), and what the test holds."""

    kmsd: Replica
    ops: Ops
    token: str
    sm: Relay
    pg: Postgres
    moto: str
    sm_client: Any
    make_user: Any
    workdir: Path
    agents: list[AgentProcess] = field(default_factory=list)
    # A path of its own: moto lives for the whole session, and an SM secret another test
    # left under the same name would be adopted, with its versions and labels.
    app: str = field(default_factory=unique_app)

    def put(self, value: dict[str, Any]) -> Any:
        return put_json(self.kmsd.addr, self.token, self.app, "db", value)

    def stages(self) -> dict[str, str]:
        return pg_stages(self.kmsd.addr, self.token, self.app, "db")

    def outbox_empty(self) -> bool:
        return self.pg.outbox() == []

    def agent(self, name: str) -> AgentProcess:
        host: Identity = self.make_user(f"{name}-{self.workdir.name[-10:]}")
        self.ops("app", "bind", self.app, "--role", host.arn)
        agent = host_agent(
            host, self.kmsd, self.moto, self.workdir / name, self.app, instance_id=name
        )
        self.agents.append(agent)
        return agent.wait_ready()

    def first_version(self) -> str:
        self.ops("node", "create", self.app, "--parents")
        return self.ops.put(self.app, "db", {"password": "v0"})

    def arn(self) -> str:
        return str(self.sm_client.describe_secret(SecretId=f"kmsd/{self.app}/db")["ARN"])

    def in_doubt(self) -> list[str]:
        return [str(r["version_id"]) for r in self.pg.outbox() if r["op"] == "put"]


@pytest.fixture
def rig_factory(
    env: dict[str, str],
    admin: Identity,
    moto_endpoint: str,
    sm_client: Any,
    make_user: Any,
    tmp_path: Path,
) -> Iterator[Any]:
    made: list[Rig] = []
    relays: list[Relay] = []
    pgs: list[Postgres] = []

    def make(extra: dict[str, str] | None = None, *, db_relay: Relay | None = None) -> Rig:
        sm = Relay.to_url(moto_endpoint)
        relays.append(sm)
        pg = Postgres(env["KMSD_DATABASE_URL"])
        pgs.append(pg)
        kmsd_env = {
            **env,
            **FAST,
            **(extra or {}),
            "AWS_ENDPOINT_URL": sm.endpoint,
            "KMSD_STS_ENDPOINT": moto_endpoint,  # sign-in stays direct: only SM is faulted
        }
        if db_relay is not None:
            kmsd_env["KMSD_DATABASE_URL"] = dsn_through(env["KMSD_DATABASE_URL"], db_relay)
        kmsd = Replica(kmsd_env, tmp_path)
        ops = Ops(kmsd, admin, moto_endpoint)
        rig = Rig(
            kmsd,
            ops,
            login(kmsd.addr, admin, moto_endpoint),
            sm,
            pg,
            moto_endpoint,
            sm_client,
            make_user,
            tmp_path,
        )
        made.append(rig)
        return rig

    try:
        yield make
    finally:
        for rig in made:
            for agent in rig.agents:
                agent.stop()
            rig.kmsd.stop()
        for relay in relays:
            relay.close()
        for pg in pgs:
            pg.close()


def settled(rig: Rig, arn: str, current: str, superseded: str | None) -> None:
    """After the reconciler: ``current`` is current in PostgreSQL and SM, ``superseded`` is
    current nowhere, both sides' labels agree, and a fresh agent serves ``current``."""
    wait_for(rig.outbox_empty, "the reconciler to empty the outbox", 15)
    stages = rig.stages()
    assert stages.get(current) == "current", stages
    if superseded is not None:
        assert stages.get(superseded) in (None, "deprecated"), stages
    labels = sm_labels(rig.sm_client, arn)
    assert holders(labels, "AWSCURRENT") == [current], labels
    # Any other label SM moved by itself (AWSPREVIOUS) is brought to PostgreSQL's stages.
    try:
        wait_for(
            lambda: disagreements(rig.stages(), sm_labels(rig.sm_client, arn)) == [],
            "SM's labels to mirror PostgreSQL",
            5,
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}: PostgreSQL {rig.stages()}, SM {sm_labels(rig.sm_client, arn)}"
        ) from None
    got = rig.sm_client.get_secret_value(SecretId=arn, VersionStage="AWSCURRENT")
    assert got["VersionId"] == current
    fresh = rig.agent(f"fresh-{len(rig.agents)}")
    answer = fresh.get("/v1/secrets/db")
    assert answer.status == 200, answer
    assert answer.body["version_id"] == current
    assert answer.body["value"] == sm_value(rig.sm_client, arn, current)


@pytest.mark.slow
@pytest.mark.parametrize("later_write", [True, False], ids=["then-a-later-write", "alone"])
def test_a_write_whose_sm_answer_was_lost_is_settled_by_the_reconciler(
    rig_factory: Any, later_write: bool
) -> None:
    rig: Rig = rig_factory(HOLD_INTENTS)
    rig.first_version()
    rig.sm.set_mode("drop_answers")
    started = time.monotonic()
    lost = rig.put({"password": "answer-lost"})
    took = time.monotonic() - started
    rig.sm.set_mode("pass")
    assert lost.status == 502, lost
    assert lost.headers["Content-Type"].startswith("application/problem+json"), lost.headers
    assert lost.body.get("ambiguous") is True, lost.body
    assert took < 20, f"the ambiguous answer took {took:.1f} s"
    # The request did reach moto (only its answer was lost): SM holds the in-doubt version.
    assert PUT_OP in rig.sm.ops("drop_answers"), rig.sm.requests
    assert rig.sm.dropped >= 1
    (doubt,) = rig.in_doubt()  # the intent is kept for the reconciler
    arn = rig.arn()
    assert doubt in sm_labels(rig.sm_client, arn)
    assert sm_value(rig.sm_client, arn, doubt) == {"password": "answer-lost"}

    if later_write:
        second = rig.put({"password": "second"})
        assert second.status == 200, second
        assert doubt in rig.in_doubt(), "the lost write was resolved before the later one"
        settled(rig, arn, current=second.body["version_id"], superseded=doubt)
    else:
        # Nothing acknowledged since, and SM's AWSCURRENT is on it: it becomes current.
        settled(rig, arn, current=doubt, superseded=None)


@pytest.mark.slow
@pytest.mark.parametrize("later_write", [True, False], ids=["then-a-later-write", "alone"])
@pytest.mark.parametrize("outage", ["brief", "lasting"])
def test_postgresql_cut_between_the_sm_write_and_the_metadata(
    rig_factory: Any, env: dict[str, str], later_write: bool, outage: str
) -> None:
    """PostgreSQL goes away when the SM write passes through the relay, before SM answers.

    brief: it is back as soon as SM's answer passes (kmsd's connection is gone all the same);
    lasting: it is back only after the caller has had its answer.
    """
    armed = threading.Event()
    db = pg_relay(env["KMSD_DATABASE_URL"])

    def cut_database(chunk: bytes) -> None:
        if armed.is_set() and amz_target(chunk) == PUT_OP:
            armed.clear()
            db.set_mode("down")

    def restore_database(chunk: bytes) -> None:
        if outage == "brief" and db.mode == "down" and chunk.startswith(b"HTTP/1.1 200"):
            db.set_mode("pass")

    try:
        rig: Rig = rig_factory(HOLD_INTENTS, db_relay=db)
        v0 = rig.first_version()
        running = rig.agent("running")
        assert running.value("db") == {"password": "v0"}

        rig.sm.on_request, rig.sm.on_answer = cut_database, restore_database
        armed.set()
        cut = rig.put({"password": "reached-sm"})
        db.set_mode("pass")
        assert not armed.is_set(), "the PutSecretValue never went through the relay"
        assert rig.sm.hook_errors == []
        assert cut.status == 503, cut
        assert cut.headers["Content-Type"].startswith("application/problem+json"), cut.headers
        assert 1 <= int(cut.headers.get("Retry-After", "0")) <= 120, cut
        assert "reached Secrets Manager" in cut.body["detail"], cut.body
        (doubt,) = rig.in_doubt()  # the intent survived (committed before the SM call)
        arn = rig.arn()
        assert holders(sm_labels(rig.sm_client, arn), "AWSCURRENT") == [doubt]

        wait_for(lambda: health(rig.kmsd) == 200, "kmsd to be healthy again", 20)
        if later_write:
            second = rig.put({"password": "second"})
            assert second.status == 200, second
            assert doubt in rig.in_doubt(), "the cut write was resolved before the later one"
            want, value = second.body["version_id"], "second"
            settled(rig, arn, current=want, superseded=doubt)
        else:
            want, value = doubt, "reached-sm"
            settled(rig, arn, current=want, superseded=None)
        assert rig.stages().get(v0) in ("previous", "deprecated")
        # The agent that ran through the outage agrees with the fresh one.
        wait_for(
            lambda: running.get("/v1/secrets/db").body.get("version_id") == want,
            "the running agent to serve the settled version",
            15,
        )
        assert running.value("db") == {"password": value}
    finally:
        db.close()


def test_a_label_moved_behind_kmsds_back_is_put_back_by_the_reconciler(rig_factory: Any) -> None:
    rig: Rig = rig_factory()
    v1 = rig.first_version()
    v2 = rig.ops.put(rig.app, "db", {"password": "v2"})
    arn = rig.arn()
    assert holders(sm_labels(rig.sm_client, arn), "AWSCURRENT") == [v2]
    # Someone with SM rights moves AWSCURRENT back to the older version, straight at moto.
    rig.sm_client.update_secret_version_stage(
        SecretId=arn, VersionStage="AWSCURRENT", MoveToVersionId=v1, RemoveFromVersionId=v2
    )
    assert holders(sm_labels(rig.sm_client, arn), "AWSCURRENT") == [v1]
    took = wait_for(
        lambda: holders(sm_labels(rig.sm_client, arn), "AWSCURRENT") == [v2],
        "the reconciler's sweep to move AWSCURRENT back to the last acknowledged write",
        6,  # a couple of 0.5 s intervals, with room for a slow machine
    )
    assert rig.stages() == {v2: "current", v1: "previous"}  # PostgreSQL was not changed
    wait_for(
        lambda: disagreements(rig.stages(), sm_labels(rig.sm_client, arn)) == [],
        "AWSPREVIOUS to follow",
        3,
    )
    got = rig.sm_client.get_secret_value(SecretId=arn, VersionStage="AWSCURRENT")
    assert (got["VersionId"], got["SecretString"]) == (v2, '{"password":"v2"}')
    assert took < 6


@pytest.mark.slow
def test_a_hanging_sm_fails_the_put_within_the_call_bound_then_both_sides_agree(
    rig_factory: Any,
) -> None:
    # The read timeout stays at its default (10 s): the total bound (3 s) must win.
    rig: Rig = rig_factory(
        {**HOLD_INTENTS, "KMSD_AWS_CALL_TIMEOUT": "3", "KMSD_AWS_READ_TIMEOUT": "10"},
    )
    v0 = rig.first_version()
    arn = rig.arn()
    rig.sm.set_mode("blackhole")
    started = time.monotonic()
    try:
        hung = put_json(rig.kmsd.addr, rig.token, rig.app, "db", {"password": "no"}, timeout=30)
    except TimeoutError:
        raise AssertionError("no answer within 30 s with a 3 s call bound") from None
    took = time.monotonic() - started
    assert took < 6, f"the PUT took {took:.1f} s with a 3 s call bound"
    assert hung.status == 502, hung
    assert hung.headers["Content-Type"].startswith("application/problem+json"), hung.headers
    assert PUT_OP in rig.sm.ops("blackhole"), rig.sm.requests
    (doubt,) = rig.in_doubt()  # timed out: SM may or may not have it, the intent stays
    rig.sm.set_mode("pass")

    # The value never reached SM: the reconciler drops the intent, v0 stays current.
    wait_for(rig.outbox_empty, "the reconciler to empty the outbox", 15)
    labels = sm_labels(rig.sm_client, arn)
    assert doubt not in labels, labels
    assert rig.stages() == {v0: "current"}
    assert disagreements(rig.stages(), labels) == []

    second = rig.put({"password": "after"})
    assert second.status == 200, second
    settled(rig, arn, current=second.body["version_id"], superseded=None)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("lost_first", "recreated"),
    [(False, False), (True, False), (False, True)],
    ids=["put", "lost-then-put", "deleted-recreated-put"],
)
def test_labels_agree_after_a_put_that_follows_a_rotation(
    rig_factory: Any, lost_first: bool, recreated: bool
) -> None:
    """A put after a rotation - plain, after a write whose answer was lost, or into the SM
    secret of a deleted node, adopted when the path is created again: SM's labels end on
    PostgreSQL's stages. (moto can leave AWSCURRENT on two versions after such a put, and list
    it twice on one version once moved: the repair must converge, not retry a refusal.)"""
    rig: Rig = rig_factory(HOLD_INTENTS)
    old = rig.first_version()
    rot = rig.ops.json(
        "rotate", "start", rig.app, "db", "--value", '{"password": "rotated"}', "--mode", "auto"
    )
    wait_for(
        lambda: rig.ops.json("rotate", "status", str(rot["id"]))["phase"] == "done",
        "the rotation (no instance to wait for) to finish",
        15,
    )
    arn = rig.arn()
    wait_for(
        lambda: disagreements(rig.stages(), sm_labels(rig.sm_client, arn)) == [],
        "SM's labels to follow the rotation",
        5,
    )
    assert rig.stages()[old] == "revoked"
    if recreated:
        # The node goes, its SM secret is scheduled for deletion; a new node of the same path
        # and a put restore and adopt that SM secret, with the versions and labels it had.
        rig.ops("node", "delete", rig.app, "--recursive")
        rig.ops("node", "create", rig.app, "--parents")
    if lost_first:
        rig.sm.set_mode("drop_answers")
        lost = rig.put({"password": "lost"})
        rig.sm.set_mode("pass")
        assert lost.status == 502, lost
    after = rig.put({"password": "after"})
    assert after.status in (200, 201), after
    try:
        wait_for(
            lambda: disagreements(rig.stages(), sm_labels(rig.sm_client, arn)) == [],
            "SM's labels to mirror PostgreSQL after the put",
            15,
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}: PostgreSQL {rig.stages()}, SM {sm_labels(rig.sm_client, arn)}"
        ) from None
    assert holders(sm_labels(rig.sm_client, arn), "AWSCURRENT") == [after.body["version_id"]]


def test_an_unreachable_sm_fails_the_put_plainly_and_leaves_nothing(rig_factory: Any) -> None:
    """Connections refused: SM cannot have the value, so the 502 is not ambiguous, the intent
    is gone at once, and SM and PostgreSQL are as before. (Under heavy load botocore's retries
    and back-off can outlast the call bound; kmsd then cannot tell whether an attempt got
    through and says "ambiguous": the reconciler finds nothing in SM and drops the intent.)"""
    rig: Rig = rig_factory(HOLD_INTENTS)
    v0 = rig.first_version()
    arn = rig.arn()
    before = sm_labels(rig.sm_client, arn)
    rig.sm.set_mode("down")
    refused = rig.put({"password": "nowhere"})
    rig.sm.set_mode("pass")
    assert refused.status == 502, refused
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    if refused.body.get("ambiguous"):
        wait_for(rig.outbox_empty, "the reconciler to drop the intent", 30)
    assert rig.in_doubt() == []  # nothing for the reconciler: the caller's failure stands
    assert sm_labels(rig.sm_client, arn) == before
    assert rig.stages() == {v0: "current"}


@pytest.mark.slow
def test_a_first_write_whose_answer_was_lost_is_recorded_by_the_reconciler(
    rig_factory: Any,
) -> None:
    """CreateSecret reached SM, its answer did not: no metadata yet, then the reconciler
    records the secret itself (AWSCURRENT is on the version, nothing else was acknowledged)."""
    rig: Rig = rig_factory(HOLD_INTENTS)
    rig.ops("node", "create", rig.app, "--parents")
    rig.sm.set_mode("drop_answers")
    lost = rig.put({"password": "first"})
    rig.sm.set_mode("pass")
    assert lost.status == 502, lost
    assert lost.body.get("ambiguous") is True, lost.body
    assert "secretsmanager.CreateSecret" in rig.sm.ops("drop_answers"), rig.sm.requests
    (doubt,) = rig.in_doubt()
    missing = request(rig.kmsd.addr, "GET", f"/v1/secrets/{rig.app}/db", token=rig.token)
    assert missing.status == 404, missing  # no metadata until the reconciler decides
    settled(rig, rig.arn(), current=doubt, superseded=None)
    assert rig.stages() == {doubt: "current"}
