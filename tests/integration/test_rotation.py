"""Rotations through the API: stages, SM labels, gates from adoption, commands, the driver,
webhooks and the console - real PostgreSQL and moto; agents simulated by their watch reports."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kmsd.domain.access import parse_cidrs
from kmsd.keys import ADOPTION, METRICS, ROTATIONS
from tests.conftest import Identity
from tests.integration.conftest import Api, ClientFactory, FakeClock, sign_in

App = TestClient[web.Request, web.Application]
OWNER, REFERENCER = "prod/shop", "prod/billing"
NEW_VALUE = "s3cr3t-of-the-new-version"


async def setup_shared(api: Api) -> str:
    """prod/shop owns db (shared with prod/billing as shop-db); returns db's first version."""
    await api.ok("PUT", f"/v1/nodes/{OWNER}?parents=true")
    await api.ok("PUT", f"/v1/nodes/{REFERENCER}?parents=true")
    first = (await api.put_json(f"{OWNER}/db", {"password": "old"}))["version_id"]
    await api.ok("POST", "/v1/shares", json={"secret": f"{OWNER}/db", "to": REFERENCER})
    await api.ok("PUT", f"/v1/refs/{REFERENCER}/shop-db", json={"target": f"{OWNER}/db"})
    return str(first)


async def report(api: Api, path: str, instance: str, name: str, current: str, *also: str) -> None:
    """What an agent's poll reports: the current version it serves, and every one it holds."""
    body = {
        "path": path,
        "path_version": 0,
        "instance_id": instance,
        "held": {name: current},
        "versions": {name: [current, *also]},
    }
    status, _ = await api.call("POST", "/v1/watch?timeout=0", json=body)
    assert status in (200, 304)
    await api.client.app[ADOPTION].flush()


async def start(api: Api, **body: Any) -> dict[str, Any]:
    doc: dict[str, Any] = await api.ok(
        "POST",
        "/v1/rotations",
        json={"path": OWNER, "name": "db", "value": {"password": NEW_VALUE}, **body},
    )
    return doc


async def labels(sm_client: Any, arn: str) -> dict[str, list[str]]:
    stages = sm_client.describe_secret(SecretId=arn)["VersionIdsToStages"]
    return {v: sorted(s) for v, s in stages.items() if s}


def versions_of(doc: dict[str, Any], name: str) -> dict[str, str]:
    entry = next(s for s in doc["secrets"] if s["name"] == name)
    return {v["version_id"]: v["stage"] for v in entry["versions"]}


async def test_a_manual_rotation_through_both_gates(
    api: Api, sm_client: Any, db: asyncpg.Connection
) -> None:
    old = await setup_shared(api)
    billing_before = await api.effective(REFERENCER)
    rot = await start(api)
    new, rid = rot["new_version"], rot["id"]
    assert (rot["phase"], rot["mode"], rot["old_version"]) == ("pending", "manual", old)
    arn = (await api.effective(OWNER))["secrets"][0]["sm_arn"]

    # Pending: the owner is offered it, the referencer is not; SM labels it AWSPENDING.
    assert versions_of(await api.effective(OWNER), "db") == {old: "current", new: "pending"}
    assert versions_of(await api.effective(REFERENCER), "shop-db") == {old: "current"}
    assert (await api.effective(REFERENCER))["hash"] == billing_before["hash"]
    assert await labels(sm_client, arn) == {old: ["AWSCURRENT"], new: ["AWSPENDING"]}

    # Gate 1: the owner's instance has not fetched the pending version yet.
    await report(api, OWNER, "i-owner", "db", old)
    await report(api, REFERENCER, "i-ref", "shop-db", old)
    gate = (await api.ok("GET", f"/v1/rotations/{rid}"))["gate"]
    assert gate["gate"] == 1
    assert [i["instance_id"] for i in gate["waiting"]] == ["i-owner"]  # referencers not counted
    status, problem = await api.call("POST", f"/v1/rotations/{rid}/advance")
    assert status == 409
    assert "i-owner" in problem["detail"]

    await report(api, OWNER, "i-owner", "db", old, new)
    promoted = await api.ok("POST", f"/v1/rotations/{rid}/advance")
    assert promoted["phase"] == "promoted"
    assert versions_of(await api.effective(OWNER), "db") == {new: "current", old: "previous"}
    billing = await api.effective(REFERENCER)
    assert versions_of(billing, "shop-db") == {new: "current"}
    assert billing["path_version"] > billing_before["path_version"]  # referencers woke
    assert await labels(sm_client, arn) == {new: ["AWSCURRENT"], old: ["AWSPREVIOUS"]}

    # Gate 2: the referencer still serves the old value; force it, audited as forced.
    await report(api, OWNER, "i-owner", "db", new, old)
    gate = (await api.ok("GET", f"/v1/rotations/{rid}"))["gate"]
    assert [i["instance_id"] for i in gate["waiting"]] == ["i-ref"]
    done = await api.ok("POST", f"/v1/rotations/{rid}/advance", json={"force": True})
    assert done["phase"] == "done"
    assert done["events"][-1]["action"] == "revoke"
    assert done["events"][-1]["forced"] is True
    assert done["events"][-1]["detail"]["waiting"] == ["i-ref"]
    assert versions_of(await api.effective(OWNER), "db") == {new: "current"}  # revoked: nobody
    assert await labels(sm_client, arn) == {new: ["AWSCURRENT"], old: ["KMSD_REVOKED"]}
    audited = await db.fetchval(
        "SELECT target FROM audit_log WHERE action = 'rotation.command' AND outcome = 'allowed'"
        " ORDER BY seq DESC LIMIT 1"
    )
    assert audited.endswith(": advance (force)")
    assert [e["action"] for e in done["events"]] == ["start", "promote", "revoke"]

    # Rollback after revocation: the old value is current again, the new one revoked.
    back = await api.ok("POST", f"/v1/rotations/{rid}/rollback")
    assert back["phase"] == "rolled_back"
    assert versions_of(await api.effective(OWNER), "db") == {old: "current"}
    assert versions_of(await api.effective(REFERENCER), "shop-db") == {old: "current"}
    assert await labels(sm_client, arn) == {old: ["AWSCURRENT"], new: ["KMSD_REVOKED"]}


async def test_abort_before_promotion_leaves_everything_as_before(api: Api, sm_client: Any) -> None:
    old = await setup_shared(api)
    owner_before, billing_before = await api.effective(OWNER), await api.effective(REFERENCER)
    arn = owner_before["secrets"][0]["sm_arn"]
    rot = await start(api)
    aborted = await api.ok("POST", f"/v1/rotations/{rot['id']}/abort")
    assert aborted["phase"] == "aborted"
    owner_after = await api.effective(OWNER)
    assert owner_after["hash"] == owner_before["hash"]
    assert owner_after["path_version"] > owner_before["path_version"]  # agents drop pending
    assert (await api.effective(REFERENCER))["hash"] == billing_before["hash"]
    assert (await labels(sm_client, arn))[old] == ["AWSCURRENT"]
    assert "AWSPENDING" not in str(await labels(sm_client, arn))
    status, problem = await api.call("POST", f"/v1/rotations/{rot['id']}/advance")
    assert status == 409
    assert "aborted" in problem["detail"]
    # A new rotation may start once the last one is over.
    assert (await start(api))["phase"] == "pending"


async def test_rollback_after_promotion(api: Api, sm_client: Any) -> None:
    old = await setup_shared(api)
    rot = await start(api)
    await api.ok("POST", f"/v1/rotations/{rot['id']}/advance", json={"force": True})
    back = await api.ok("POST", f"/v1/rotations/{rot['id']}/rollback")
    assert back["phase"] == "rolled_back"
    assert versions_of(await api.effective(OWNER), "db") == {old: "current"}
    arn = (await api.effective(OWNER))["secrets"][0]["sm_arn"]
    assert await labels(sm_client, arn) == {
        old: ["AWSCURRENT"],
        rot["new_version"]: ["KMSD_REVOKED"],
    }


async def test_the_driver_advances_an_auto_rotation_when_each_gate_is_met(
    api: Api, client: App, db: asyncpg.Connection
) -> None:
    old = await setup_shared(api)
    rot = await start(api, mode="auto")
    new, driver = rot["new_version"], client.app[ROTATIONS]
    await report(api, OWNER, "i-owner", "db", old)
    assert await driver.tick() == 0  # gate 1 not met
    await report(api, OWNER, "i-owner", "db", old, new)
    assert await driver.tick() == 1
    await report(api, REFERENCER, "i-ref", "shop-db", old)
    await report(api, OWNER, "i-owner", "db", new, old)
    assert await driver.tick() == 0  # the referencer still serves the old version
    await report(api, REFERENCER, "i-ref", "shop-db", new)
    assert await driver.tick() == 1
    doc = await api.ok("GET", f"/v1/rotations/{rot['id']}")
    assert doc["phase"] == "done"
    assert [(e["action"], e["actor"], e["forced"]) for e in doc["events"][1:]] == [
        ("promote", "kmsd", False),
        ("revoke", "kmsd", False),
    ]
    audited = await db.fetch(
        "SELECT action, principal, outcome, target FROM audit_log"
        " WHERE action LIKE 'rotation.%' AND principal = 'kmsd' ORDER BY seq"
    )
    assert [(r["action"], r["outcome"]) for r in audited] == [
        ("rotation.promote", "attempt"),  # before it happens (fail closed)...
        ("rotation.promote", "allowed"),  # ...and once it has
        ("rotation.revoke", "attempt"),
        ("rotation.revoke", "allowed"),
    ]
    assert audited[0]["target"] == f"{OWNER}/db rotation {rot['id']}"


async def test_paused_rotations_wait_and_stale_instances_are_listed_not_counted(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str
) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock)
    api = await sign_in(client, admin, moto_endpoint)
    old = await setup_shared(api)
    rot = await start(api, mode="auto")
    await api.ok("POST", f"/v1/rotations/{rot['id']}/pause")
    await report(api, OWNER, "i-gone", "db", old)
    await report(api, OWNER, "i-owner", "db", old, rot["new_version"])
    gate = (await api.ok("GET", f"/v1/rotations/{rot['id']}"))["gate"]
    assert (gate["met"], [i["instance_id"] for i in gate["waiting"]]) == (False, ["i-gone"])
    clock.advance(3 * 180 + 1)  # i-gone misses three maximum holds: stale
    await report(api, OWNER, "i-owner", "db", old, rot["new_version"])
    gate = (await api.ok("GET", f"/v1/rotations/{rot['id']}"))["gate"]
    assert gate["met"] is True
    assert [i["instance_id"] for i in gate["stale"]] == ["i-gone"]
    assert gate["counts"] == {"held": 1, "live": 1, "waiting": 0, "stale": 1}
    assert await client.app[ROTATIONS].tick() == 0  # paused
    metrics = client.app[METRICS].render().decode()
    assert 'kmsd_rotations_in_progress{phase="pending",state="paused"} 1.0' in metrics
    await api.ok("POST", f"/v1/rotations/{rot['id']}/resume")
    assert await client.app[ROTATIONS].tick() == 1
    await client.app[ROTATIONS].tick()  # the gauges show what a pass found at its start
    metrics = client.app[METRICS].render().decode()
    assert 'kmsd_rotations_in_progress{phase="promoted",state="waiting"} 1.0' in metrics
    assert 'kmsd_rotations_in_progress{phase="pending"' not in metrics
    assert 'kmsd_rotation_transitions_total{action="promote",forced="false"} 1.0' in metrics


async def test_a_leaked_secret_promotes_on_timeout_but_never_revokes_on_one(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str
) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock)
    api = await sign_in(client, admin, moto_endpoint)
    old = await setup_shared(api)
    rot = await start(api, leaked=True, gate_timeout="30s")
    assert (rot["mode"], rot["gate_timeout_s"]) == ("auto", 30)
    await report(api, OWNER, "i-slow", "db", old)
    driver = client.app[ROTATIONS]
    assert await driver.tick() == 0
    clock.advance(31)
    await report(api, OWNER, "i-slow", "db", old)
    assert await driver.tick() == 1
    doc = await api.ok("GET", f"/v1/rotations/{rot['id']}")
    assert doc["phase"] == "promoted"
    promote = doc["events"][-1]
    assert (promote["action"], promote["forced"]) == ("promote", True)
    assert promote["detail"]["waiting"] == ["i-slow"]
    clock.advance(31)
    await report(api, OWNER, "i-slow", "db", old)
    assert await driver.tick() == 0
    doc = await api.ok("GET", f"/v1/rotations/{rot['id']}")
    assert (doc["phase"], doc["timed_out"]) == ("promoted", True)
    assert doc["events"][-1]["action"] == "gate_timeout"
    assert await driver.tick() == 0  # each gate's timeout is noted once
    events = (await api.ok("GET", f"/v1/rotations/{rot['id']}"))["events"]
    assert [e["action"] for e in events] == ["start", "gate_timeout", "promote", "gate_timeout"]
    assert [e["detail"].get("gate") for e in events if e["action"] == "gate_timeout"] == [1, 2]


async def test_refusals(api: Api, reader_api: Api) -> None:
    await setup_shared(api)
    bad_bodies = [
        {"path": OWNER, "name": "db"},  # no value, no generate
        {"path": OWNER, "name": "db", "value": {"a": 1}, "generate": True},
        {"path": OWNER, "name": "db", "value": "not an object"},
        {"path": OWNER, "name": "db", "value": {"a": 1}, "mode": "turbo"},
        {"path": OWNER, "name": "db", "value": {"a": 1}, "gate_timeout": "soon"},
        {"path": OWNER, "name": "db", "value": {"a": 1}, "gate_timeout": "1s"},
        {"path": OWNER, "name": "db", "value": {"a": 1}, "extra": 1},
        {"path": OWNER, "name": "db", "generate": True},  # hand-made: no spec
        {"path": OWNER, "name": "Bad Name", "value": {"a": 1}},
    ]
    for body in bad_bodies:
        status, problem = await api.call("POST", "/v1/rotations", json=body)
        assert status == 400, (body, problem)
    assert (
        await api.call("POST", "/v1/rotations", json={"path": OWNER, "name": "nope", "value": {}})
    )[0] == 404
    assert (
        await reader_api.call(
            "POST", "/v1/rotations", json={"path": OWNER, "name": "db", "value": {}}
        )
    )[0] == 403
    assert (await api.ok("GET", "/v1/rotations"))["rotations"] == []  # nothing half-written
    rot = await start(api)
    assert (
        await api.call("POST", "/v1/rotations", json={"path": OWNER, "name": "db", "value": {}})
    )[0] == 409
    status, problem = await api.call(
        "PUT", f"/v1/secrets/{OWNER}/db", json={"kind": "json", "value": {"x": 1}}
    )
    assert status == 409
    assert "being rotated" in problem["detail"]
    assert (await api.call("POST", f"/v1/rotations/{rot['id']}/explode"))[0] == 404
    assert (await api.call("POST", "/v1/rotations/999999/advance"))[0] == 404
    assert (await api.call("POST", f"/v1/rotations/{rot['id']}/rollback"))[0] == 409
    # The reader has nothing on the owner: the rotation is as invisible to it as a missing one.
    assert (await reader_api.call("POST", f"/v1/rotations/{rot['id']}/abort"))[0] == 404
    assert (await api.call("POST", f"/v1/rotations/{rot['id']}/resume"))[0] == 409


async def test_a_generated_secret_rotates_to_a_new_key_by_its_spec(
    api: Api, sm_client: Any
) -> None:
    await api.ok("PUT", f"/v1/nodes/{OWNER}?parents=true")
    made = await api.ok("POST", f"/v1/generate/{OWNER}/signing", json={"use": "signing"})
    rot = await api.ok(
        "POST", "/v1/rotations", json={"path": OWNER, "name": "signing", "generate": True}
    )
    value = sm_client.get_secret_value(
        SecretId=made["sm_arn"], VersionId=rot["new_version"], VersionStage="AWSPENDING"
    )
    old = sm_client.get_secret_value(SecretId=made["sm_arn"], VersionId=made["version_id"])
    new_doc, old_doc = orjson.loads(value["SecretString"]), orjson.loads(old["SecretString"])
    assert new_doc["algorithm"] == old_doc["algorithm"]
    assert new_doc != old_doc
    assert rot["events"][0]["detail"]["generated"] is True


@pytest.fixture
async def receiver(aiohttp_server: Any) -> tuple[TestServer, list[tuple[dict[str, str], bytes]]]:
    got: list[tuple[dict[str, str], bytes]] = []
    fail_first = [True]

    async def hook(request: web.Request) -> web.Response:
        if fail_first[0]:  # the first attempt fails: retries must keep the order
            fail_first[0] = False
            return web.Response(status=503)
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    return server, got


async def test_webhooks_receive_every_transition_in_order_signed(
    make_client: ClientFactory,
    admin: Identity,
    moto_endpoint: str,
    db: asyncpg.Connection,
    receiver: Any,
) -> None:
    server, got = receiver
    # The receiver runs on loopback, which webhooks may reach only when allowed.
    client = await make_client(webhook_allowed_cidrs=parse_cidrs(["127.0.0.0/8"]))
    api = await sign_in(client, admin, moto_endpoint)
    await setup_shared(api)
    hooks = {}
    for app_path in (OWNER, REFERENCER):
        hooks[app_path] = await api.ok(
            "PUT", f"/v1/webhooks/{app_path}", json={"url": str(server.make_url("/hook"))}
        )
    rot = await start(api)
    await api.ok("POST", f"/v1/rotations/{rot['id']}/advance", json={"force": True})
    await api.ok("POST", f"/v1/rotations/{rot['id']}/advance", json={"force": True})
    driver = client.app[ROTATIONS]
    for _ in range(20):  # each tick sends each application's next delivery
        await db.execute("UPDATE webhook_deliveries SET next_at = now()")  # skip the backoff
        await driver.tick()
        if len(got) == 6:
            break
    by_app: dict[str, list[str]] = {}
    for headers, body in got:
        doc = orjson.loads(body)
        key = hooks[doc["app"]]["hmac_key"]
        mac = hmac.new(
            key.encode(), headers["X-Kmsd-Timestamp"].encode() + b"." + body, hashlib.sha256
        )
        assert headers["X-Kmsd-Signature"] == "sha256=" + mac.hexdigest()
        assert NEW_VALUE.encode() not in body  # names and ids only, never a value
        by_app.setdefault(doc["app"], []).append(doc["action"])
    assert by_app == {
        OWNER: ["start", "promote", "revoke"],
        REFERENCER: ["start", "promote", "revoke"],
    }
    ref_doc = next(orjson.loads(b) for _, b in got if orjson.loads(b)["app"] == REFERENCER)
    assert ref_doc["local_name"] == "shop-db"


async def test_console_link_signs_in_once_and_shows_the_dashboard(
    api: Api, client: App, db: asyncpg.Connection
) -> None:
    await setup_shared(api)
    rot = await start(api)
    # The audit trail is shared by every test (append-only): read only this test's rows.
    since = await db.fetchval("SELECT coalesce(max(seq), 0) FROM audit_log")
    assert (await client.get(f"/ui/rotations/{rot['id']}", allow_redirects=False)).status == 401
    link = await api.ok("POST", "/v1/console/links")
    resp = await client.get(link["path"], allow_redirects=False)
    assert resp.status == 303
    cookie = resp.cookies["kmsd_console"]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Strict"
    again = await client.get(link["path"], allow_redirects=False)
    assert again.status == 401  # one time only
    page = await client.get(f"/ui/rotations/{rot['id']}", cookies={"kmsd_console": cookie.value})
    text = await page.text()
    assert page.status == 200
    assert "Gate 1" in text
    assert "prod/shop/<b>db</b>" in text
    assert NEW_VALUE not in text  # metadata only, never a value
    listing = await client.get("/ui/rotations", cookies={"kmsd_console": cookie.value})
    assert f"/ui/rotations/{rot['id']}" in await listing.text()
    audited = await db.fetch(
        "SELECT action, outcome FROM audit_log WHERE action LIKE 'console.%' AND seq > $1"
        " ORDER BY seq",
        since,
    )
    assert [(r["action"], r["outcome"]) for r in audited] == [
        ("console.rotation", "denied"),  # no cookie yet
        ("console.link", "attempt"),
        ("console.link", "allowed"),
        ("console.login", "allowed"),
        ("console.login", "denied"),  # the second use of the code
        ("console.rotation", "allowed"),
        ("console.rotations", "allowed"),
    ]


async def test_webhooks_to_internal_addresses_are_refused_and_a_new_hook_starts_afresh(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str, db: asyncpg.Connection
) -> None:
    api = await sign_in(await make_client(), admin, moto_endpoint)
    await setup_shared(api)
    for url in ("http://127.0.0.1:8700/v1/nodes", "http://169.254.169.254/latest", "ftp://x"):
        status, problem = await api.call("PUT", f"/v1/webhooks/{OWNER}", json={"url": url})
        assert status == 400, problem
    allowed = await make_client(webhook_allowed_cidrs=parse_cidrs(["127.0.0.0/8"]))
    api = await sign_in(allowed, admin, moto_endpoint)
    await api.ok("PUT", f"/v1/webhooks/{OWNER}", json={"url": "http://127.0.0.1:9/old"})
    await start(api)
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 1
    await api.ok("PUT", f"/v1/webhooks/{OWNER}", json={"url": "http://127.0.0.1:9/new"})
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 0  # not replayed


async def test_rolling_back_an_old_rotation_never_overwrites_a_newer_one(api: Api) -> None:
    await setup_shared(api)
    first = await start(api)
    for _ in range(2):
        await api.ok("POST", f"/v1/rotations/{first['id']}/advance", json={"force": True})
    second = await start(api)
    status, problem = await api.call("POST", f"/v1/rotations/{first['id']}/rollback")
    assert status == 409
    assert "no longer be rolled back" in problem["detail"]
    assert (await api.ok("GET", f"/v1/rotations/{second['id']}"))["phase"] == "pending"
    await api.ok("POST", f"/v1/rotations/{second['id']}/abort")
    await api.put_json(f"{OWNER}/db", {"password": "by hand"})  # a newer current version
    status, _ = await api.call("POST", f"/v1/rotations/{first['id']}/rollback")
    assert status == 409


async def test_odd_ids_and_limits_are_client_errors(api: Api) -> None:
    assert (await api.call("GET", "/v1/rotations/99999999999999999999"))[0] == 404
    assert (await api.call("GET", "/v1/rotations/-1"))[0] == 404
    assert (await api.call("GET", "/v1/rotations?limit=-1"))[0] == 400
    assert (await api.call("GET", "/v1/rotations?limit=x"))[0] == 400


async def test_a_console_session_opens_the_console_only(api: Api, client: App) -> None:
    link = await api.ok("POST", "/v1/console/links")
    resp = await client.get(link["path"], allow_redirects=False)
    token = resp.cookies["kmsd_console"].value
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/v1/rotations", headers=headers)).status == 401
    assert (await client.get("/ui/rotations", headers=headers)).status == 200
    # However the header is spaced, the token checked is the token looked up: never an API key.
    for spacing in ("  ", "\t", "   ", " \t"):
        loose = {"Authorization": f"Bearer{spacing}{token}"}
        for path in ("/v1/rotations", "/v1/nodes"):
            async with client.get(path, headers=loose) as resp:
                assert resp.status == 401, (spacing, path)
                assert resp.content_type == "application/problem+json"
        async with client.put("/v1/nodes/prod/x", headers=loose) as resp:
            assert resp.status == 401
