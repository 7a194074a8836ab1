"""Faults, through the real PostgreSQL and moto: writes resolved late never override
an acknowledged one, labels repaired toward PostgreSQL, fenced leadership, observers apart."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from kmsd.domain.access import parse_cidrs
from kmsd.errors import FencedOut
from kmsd.keys import (
    ADOPTION,
    HTTP,
    METRICS,
    POOL,
    ROTATIONS,
    SCHEDULER,
    SETTINGS,
    SM,
    WEBHOOK_KEYS,
)
from kmsd.services import webhooks
from kmsd.services.leadership import Leadership
from kmsd.services.reconcile import reconcile, sweep_labels
from tests.conftest import Identity, free_port
from tests.integration.conftest import Api, ClientFactory, eventually, intent_doc, sign_in

App = TestClient[web.Request, web.Application]
PATH = "prod/pay"


async def _secret(api: Api) -> dict[str, Any]:
    await api.ok("PUT", f"/v1/nodes/{PATH}?parents=true")
    first = await api.put_json(f"{PATH}/db", {"password": "first"})
    meta: dict[str, Any] = await api.ok("GET", f"/v1/secrets/{PATH}/db")
    sm_name = await api.client.app[POOL].fetchval("SELECT sm_name FROM secrets WHERE name = 'db'")
    return {**meta, "first": first["version_id"], "sm_name": sm_name}


async def _intent(db: asyncpg.Connection, sm_name: str, *, stage: str = "current") -> str:
    """An intent as a put leaves it when SM's answer is lost: committed, then left in doubt."""
    version_id = str(uuid.uuid4())
    intent = intent_doc(PATH, "db", sm_name, stage=stage)
    await db.execute(
        "INSERT INTO sm_outbox (op, sm_name, version_id, intent) VALUES ('put', $1, $2, $3::jsonb)",
        sm_name,
        version_id,
        json.dumps(intent),
    )
    return version_id


def _stages(sm_client: Any, sm_name: str) -> dict[str, list[str]]:
    found = sm_client.describe_secret(SecretId=sm_name)["VersionIdsToStages"]
    return {v: sorted(s) for v, s in found.items() if s}


async def _pg_stages(api: Api) -> dict[str, str]:
    meta = await api.ok("GET", f"/v1/secrets/{PATH}/db")
    return {v["version_id"]: v["stage"] for v in meta["versions"]}


async def _reconcile(client: App) -> dict[str, int]:
    return await reconcile(client.app[POOL], client.app[SM], timedelta(0))


@pytest.mark.parametrize("landed", ["before", "after"])
async def test_a_write_in_doubt_never_overrides_a_later_acknowledged_one(
    api: Api, client: App, db: asyncpg.Connection, sm_client: Any, landed: str
) -> None:
    meta = await _secret(api)
    sm_name = meta["sm_name"]
    lost = await _intent(db, sm_name)  # the caller was told 502 "ambiguous"

    def land() -> None:
        sm_client.put_secret_value(SecretId=sm_name, SecretString="{}", ClientRequestToken=lost)

    if landed == "before":
        land()  # SM took it, its answer was lost
    acked = (await api.put_json(f"{PATH}/db", {"password": "acked"}))["version_id"]
    if landed == "after":
        land()  # a retry of the lost request reached SM after the acknowledged write
        assert _stages(sm_client, sm_name)[lost] == ["AWSCURRENT"]

    counts = await _reconcile(client)
    assert counts["superseded"] == 1
    stages = await _pg_stages(api)
    assert stages[acked] == "current"
    assert stages[lost] == "deprecated"
    assert _stages(sm_client, sm_name)[acked] == ["AWSCURRENT"]  # SM agrees with PostgreSQL
    assert "AWSCURRENT" not in _stages(sm_client, sm_name).get(lost, [])
    eff = await api.effective(PATH)
    assert {v["version_id"]: v["stage"] for v in eff["secrets"][0]["versions"]}[acked] == "current"
    assert await db.fetchval("SELECT count(*) FROM sm_outbox") == 0


async def test_a_write_in_doubt_with_nothing_after_it_becomes_current(
    api: Api, client: App, db: asyncpg.Connection, sm_client: Any
) -> None:
    meta = await _secret(api)
    lost = await _intent(db, meta["sm_name"])
    sm_client.put_secret_value(SecretId=meta["sm_name"], SecretString="{}", ClientRequestToken=lost)
    assert (await _reconcile(client))["current"] == 1
    stages = await _pg_stages(api)
    assert (stages[lost], stages[meta["first"]]) == ("current", "previous")
    # A later write outranks it in turn: the write order continues from the resolved intent.
    newer = (await api.put_json(f"{PATH}/db", {"password": "newer"}))["version_id"]
    assert (await _pg_stages(api))[newer] == "current"


async def test_a_write_sm_never_got_is_dropped(
    api: Api, client: App, db: asyncpg.Connection, sm_client: Any
) -> None:
    meta = await _secret(api)
    lost = await _intent(db, meta["sm_name"])
    assert (await _reconcile(client))["drop"] == 1
    assert lost not in await _pg_stages(api)
    assert _stages(sm_client, meta["sm_name"]) == {meta["first"]: ["AWSCURRENT"]}


async def test_a_label_moved_by_hand_is_repaired_toward_the_last_acknowledged_write(
    api: Api, client: App, sm_client: Any
) -> None:
    meta = await _secret(api)
    second = (await api.put_json(f"{PATH}/db", {"password": "second"}))["version_id"]
    sm_client.update_secret_version_stage(
        SecretId=meta["sm_name"],
        VersionStage="AWSCURRENT",
        MoveToVersionId=meta["first"],
        RemoveFromVersionId=second,
    )
    assert _stages(sm_client, meta["sm_name"])[meta["first"]] == ["AWSCURRENT"]
    cursor, moves = await sweep_labels(client.app[POOL], client.app[SM], 0)
    assert cursor == 0  # one batch covered every secret
    assert moves >= 1  # AWSCURRENT moved back (SM moves AWSPREVIOUS with it)
    assert _stages(sm_client, meta["sm_name"]) == {
        second: ["AWSCURRENT"],
        meta["first"]: ["AWSPREVIOUS"],
    }
    assert await sweep_labels(client.app[POOL], client.app[SM], 0) == (0, 0)


async def test_the_sweep_leaves_a_secret_with_a_write_in_doubt_alone(
    api: Api, client: App, db: asyncpg.Connection, sm_client: Any
) -> None:
    meta = await _secret(api)
    lost = await _intent(db, meta["sm_name"])
    sm_client.put_secret_value(SecretId=meta["sm_name"], SecretString="{}", ClientRequestToken=lost)
    # SM is ahead of PostgreSQL for a reason the reconciler will settle: no repair yet.
    assert await sweep_labels(client.app[POOL], client.app[SM], 0) == (0, 0)
    assert _stages(sm_client, meta["sm_name"])[lost] == ["AWSCURRENT"]


# -- leadership --------------------------------------------------------------------------------


async def _backend_of(db: asyncpg.Connection, replica: str) -> int:
    pid = await db.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", f"kmsd-leader/{replica}"
    )
    assert pid is not None
    return int(pid)


# The app's scheduler checks its leadership once at start, then (with these ticks) not again
# during the test: the test drives takeovers by hand.
SLOW = {"scheduler_tick_s": 3600.0, "rotation_tick_s": 3600.0}


async def test_a_deposed_leader_is_fenced_out(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str, db: asyncpg.Connection
) -> None:
    # A receiver on loopback that is not listening: deliveries fail at once, nothing leaves.
    client = await make_client(webhook_allowed_cidrs=parse_cidrs(["127.0.0.1/32"]), **SLOW)
    api = await sign_in(client, admin, moto_endpoint)
    scheduler = client.app[SCHEDULER]
    await eventually(lambda: scheduler.leader)
    old = scheduler.leadership.epoch
    assert old is not None
    # An auto rotation nobody holds: the driver's next pass would promote it.
    await _secret(api)
    await api.ok(
        "PUT", f"/v1/webhooks/{PATH}", json={"url": f"http://127.0.0.1:{free_port()}/hook"}
    )
    await api.ok(
        "POST",
        "/v1/rotations",
        json={"path": PATH, "name": "db", "value": {"password": "n"}, "mode": "auto"},
    )
    other = Leadership(client.app[SETTINGS].database_url, "replica-b", client.app[METRICS])
    try:
        assert not await other.check()  # one leader at a time
        # The leader's lock connection dies; the other replica takes over with a new epoch.
        replica = client.app[SETTINGS].replica_id
        await db.execute("SELECT pg_terminate_backend($1)", await _backend_of(db, replica))
        await eventually(lambda: not scheduler.leader)  # noticed at once (termination notice)
        async with asyncio.timeout(10):
            while not await other.check():  # noqa: ASYNC110 - the condition is a DB query
                await asyncio.sleep(0.05)
        assert other.epoch == old + 1
        # A step and a delivery the old leader had decided on are refused by the database.
        with pytest.raises(FencedOut):
            await client.app[ROTATIONS].tick(old)
        with pytest.raises(FencedOut):
            await webhooks.deliver_due(
                client.app[POOL], client.app[HTTP], (), old, keys=client.app[WEBHOOK_KEYS]
            )
        assert (await api.ok("GET", "/v1/rotations"))["rotations"][0]["phase"] == "pending"
        assert (
            await db.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE claimed_at IS NOT NULL"
            )
            == 0
        )
        # The current epoch passes.
        assert await client.app[ROTATIONS].tick(other.epoch) == 1
        assert (await api.ok("GET", "/v1/rotations"))["rotations"][0]["phase"] == "promoted"
    finally:
        await other.close()


async def test_a_leader_whose_epoch_moved_steps_down(
    make_client: ClientFactory, db: asyncpg.Connection
) -> None:
    client = await make_client(**SLOW)
    scheduler = client.app[SCHEDULER]
    await eventually(lambda: scheduler.leader)
    # A takeover it did not see (the epoch moved on): its next check steps it down.
    await db.execute("UPDATE leadership SET epoch = epoch + 1 WHERE name = 'scheduler'")
    assert not await scheduler.leadership.check()
    assert client.app[METRICS].scheduler_leader._value.get() == 0
    assert client.app[METRICS].scheduler_epoch._value.get() == 0


# -- observers ---------------------------------------------------------------------------------


async def _poll(api: Api, instance: str, role: str, held: dict[str, str]) -> None:
    body = {
        "path": PATH,
        "path_version": 0,
        "instance_id": instance,
        "held": held,
        "versions": {k: [v] for k, v in held.items()},
        "role": role,
    }
    status, _ = await api.call("POST", "/v1/watch?timeout=0", json=body)
    assert status in (200, 304)
    await api.client.app[ADOPTION].flush()


async def test_observers_never_hold_a_gate_and_forget_is_audited(
    api: Api, db: asyncpg.Connection
) -> None:
    meta = await _secret(api)
    agent = f"i-agent-{uuid.uuid4().hex[:8]}"  # the audit trail is shared by every test
    await _poll(api, "kmsctl-1", "observer", {})
    await _poll(api, agent, "serving", {"db": meta["first"]})
    rot = await api.ok(
        "POST", "/v1/rotations", json={"path": PATH, "name": "db", "value": {"password": "n"}}
    )
    gate = (await api.ok("GET", f"/v1/rotations/{rot['id']}"))["gate"]
    assert [i["instance_id"] for i in gate["waiting"]] == [agent]  # never kmsctl-1
    assert gate["waiting"][0]["stale_at"] > gate["waiting"][0]["last_seen"]
    adoption = await api.ok("GET", f"/v1/adoption/{PATH}")
    assert [i["instance_id"] for i in adoption["observers"]] == ["kmsctl-1"]
    assert [i["instance_id"] for i in adoption["instances"]] == [agent]

    # The agent is gone for good: forgetting it lets the gate go on.
    seq_before = await db.fetchval("SELECT coalesce(max(seq), 0) FROM audit_log")
    forgot = await api.ok("DELETE", f"/v1/adoption/{PATH}?instance={agent}")
    assert forgot == {"path": PATH, "instance_id": agent, "forgotten": True}
    gate = (await api.ok("GET", f"/v1/rotations/{rot['id']}"))["gate"]
    assert gate["met"] is True
    status, problem = await api.call("DELETE", f"/v1/adoption/{PATH}?instance={agent}")
    assert (status, problem["status"]) == (404, 404)
    status, _ = await api.call("DELETE", f"/v1/adoption/{PATH}")
    assert status == 400
    rows = await db.fetch(
        "SELECT outcome, status, target FROM audit_log WHERE action = 'adoption.forget'"
        " AND outcome <> 'attempt' AND seq > $1 ORDER BY seq",
        seq_before,
    )
    assert [(r["outcome"], r["status"]) for r in rows] == [
        ("allowed", 200),
        ("rejected", 404),
        ("rejected", 400),
    ]
    assert rows[0]["target"] == f"{PATH} instance {agent}"
    # ... and found by the path they concern, attempt and outcome alike.
    listed = await api.ok("GET", f"/v1/audit?path={PATH}&action=adoption.forget")
    assert ("allowed", f"{PATH} instance {agent}") in [
        (r["outcome"], r["target"]) for r in listed["rows"]
    ]


async def test_a_bad_role_is_refused(api: Api) -> None:
    await _secret(api)
    body = {"path": PATH, "path_version": 0, "instance_id": "i", "role": "boss"}
    status, problem = await api.call("POST", "/v1/watch?timeout=0", json=body)
    assert status == 400
    assert "'role'" in problem["detail"]


async def test_forget_refuses_a_malformed_instance_id(api: Api) -> None:
    await _secret(api)
    status, problem = await api.call("DELETE", f"/v1/adoption/{PATH}?instance=a%20b")
    assert status == 400
    assert "'instance'" in problem["detail"]


async def test_one_report_postgresql_refuses_does_not_hold_up_the_others(
    client: App, db: asyncpg.Connection
) -> None:
    from datetime import UTC, datetime

    from kmsd.hub.adoption import Report

    buffer = client.app[ADOPTION]
    now = datetime.now(UTC)
    good = Report(PATH, "i-good", "role/x", "10.0.0.1", (), {"db": "v1"}, 1, now)
    # NUL cannot be stored in jsonb text: the watch parser refuses it, the buffer copes anyway.
    bad = Report(PATH, "i-bad", "role/x", "10.0.0.1", (), {"db": "v\x00"}, 1, now)
    buffer.report(good)
    buffer.report(bad)
    assert await buffer.flush() == 1
    assert await db.fetchval("SELECT array_agg(instance_id) FROM adoption") == ["i-good"]
    assert await buffer.flush() == 0  # the refused one is not retried for ever


async def test_a_row_that_keeps_failing_is_quarantined_and_holds_up_nothing(
    api: Api, client: App, db: asyncpg.Connection, sm_client: Any
) -> None:
    from kmsd.services.reconcile import QUARANTINE_AFTER, QUARANTINED

    meta = await _secret(api)
    # An intent as an older kmsd accepted it: its expiry is year 10000 once in UTC, which
    # breaks recording it (OverflowError) - and, in SM, AWSCURRENT is on it.
    broken = await _intent(db, meta["sm_name"])
    await db.execute(
        "UPDATE sm_outbox SET intent = jsonb_set(intent, '{expires_at}', $2::jsonb)"
        " WHERE version_id = $1",
        broken,
        '"9999-12-31T23:59:59-14:00"',
    )
    sm_client.put_secret_value(
        SecretId=meta["sm_name"], SecretString="{}", ClientRequestToken=broken
    )
    # Behind it, a write SM never got: it must still be resolved, on the first pass.
    other = await _intent(db, meta["sm_name"])
    first = await _reconcile(client)
    assert first["drop"] == 1
    assert await db.fetchval("SELECT count(*) FROM sm_outbox WHERE version_id = $1", other) == 0
    for _ in range(QUARANTINE_AFTER - 1):
        await _reconcile(client)
    row = await db.fetchrow(
        "SELECT attempts, last_error FROM sm_outbox WHERE version_id = $1", broken
    )
    assert row is not None
    assert row["attempts"] == QUARANTINE_AFTER
    assert row["last_error"] == "DataError"  # asyncpg's word for a time it cannot encode
    assert await db.fetchval(QUARANTINED, QUARANTINE_AFTER) == 1
    assert sum((await _reconcile(client)).values()) == 0  # quarantined: left alone from now on
