"""The audit trail: every call leaves a row, the table refuses edits, the chain shows tampering,
and a call whose row cannot be written is refused."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest

from tests.conftest import Identity
from tests.integration.conftest import Api, ClientFactory, login_body, sign_in


async def _last(db: asyncpg.Connection, n: int) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT principal, claimed, action, target, outcome, status FROM audit_log"
        " ORDER BY seq DESC LIMIT $1",
        n,
    )
    return [dict(r) for r in reversed(rows)]


async def test_allowed_and_denied_calls_are_audited(
    api: Api, reader_api: Api, admin: Identity, reader: Identity, db: asyncpg.Connection
) -> None:
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    await api.grant(reader.arn, "prod/pay", "read")
    await api.ok("GET", "/v1/auth/whoami")
    assert (await _last(db, 5))[:2] == [
        {
            "principal": admin.arn,
            "claimed": "",
            "action": "node.create",
            "target": "prod/pay",
            "outcome": "attempt",
            "status": 0,
        },
        {
            "principal": admin.arn,
            "claimed": "",
            "action": "node.create",
            "target": "prod/pay",
            "outcome": "allowed",
            "status": 201,
        },
    ]
    await reader_api.call("PUT", "/v1/nodes/prod/shop")
    (denied,) = [r for r in await _last(db, 2) if r["outcome"] != "attempt"]
    assert (denied["action"], denied["outcome"], denied["status"]) == ("node.create", "denied", 403)
    await reader_api.effective("prod/pay")
    (read,) = await _last(db, 1)
    assert (read["action"], read["target"], read["outcome"]) == (
        "effective.read",
        "prod/pay",
        "allowed",
    )
    async with api.client.get("/v1/effective/prod/pay") as resp:  # no token
        assert resp.status == 401
    (anon,) = await _last(db, 1)
    assert (anon["principal"], anon["outcome"]) == ("-", "denied")


async def test_failed_sign_in_is_audited_with_the_claimed_key(
    api: Api, admin: Identity, db: asyncpg.Connection
) -> None:
    body = login_body(admin, "http://sts.elsewhere.example")
    async with api.client.post("/v1/auth/aws/login", json=body) as resp:
        assert resp.status == 401
    (row,) = await _last(db, 1)
    assert (row["action"], row["principal"], row["claimed"], row["outcome"]) == (
        "auth.login",
        "-",
        admin.access_key,
        "denied",
    )


async def test_watch_is_audited_when_accepted(api: Api, db: asyncpg.Connection) -> None:
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    status, _ = await api.call(
        "POST",
        "/v1/watch?timeout=0",
        json={"path": "prod/pay", "path_version": 0, "instance_id": "i"},
    )
    assert status == 200
    (row,) = await _last(db, 1)
    assert (row["action"], row["target"], row["outcome"]) == ("watch", "prod/pay", "allowed")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET target = 'x'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ],
)
async def test_audit_log_is_append_only(api: Api, db: asyncpg.Connection, statement: str) -> None:
    await api.ok("GET", "/v1/auth/whoami")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute(statement)


async def _fresh_app(
    make_client: ClientFactory, fresh_database: Any, admin: Identity, moto_endpoint: str
) -> tuple[Api, str]:
    dsn = await asyncio.to_thread(fresh_database, f"audit_{uuid.uuid4().hex[:8]}")
    client = await make_client(database_url=dsn)
    return await sign_in(client, admin, moto_endpoint), dsn


async def test_verify_names_the_edited_row(
    make_client: ClientFactory, fresh_database: Any, admin: Identity, moto_endpoint: str
) -> None:
    api, dsn = await _fresh_app(make_client, fresh_database, admin, moto_endpoint)
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    await api.ok("GET", "/v1/nodes/prod/pay")
    assert await api.ok("POST", "/v1/audit/verify") == {
        "ok": True,
        "checked": 4,
        "first_broken_seq": None,
    }
    conn = await asyncpg.connect(dsn)
    try:  # a superuser turns the trigger off and rewrites history
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete")
        await conn.execute("UPDATE audit_log SET principal = 'someone-else' WHERE seq = 3")
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_delete")
    finally:
        await conn.close()
    doc = await api.ok("POST", "/v1/audit/verify")
    assert (doc["ok"], doc["first_broken_seq"], doc["checked"]) == (False, 3, 2)


async def test_chain_stays_intact_under_concurrent_calls_on_two_replicas(
    make_client: ClientFactory, fresh_database: Any, admin: Identity, moto_endpoint: str
) -> None:
    api_a, dsn = await _fresh_app(make_client, fresh_database, admin, moto_endpoint)
    api_b = await sign_in(await make_client(database_url=dsn), admin, moto_endpoint)
    await api_a.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    calls = [(api_a if i % 2 else api_b).call("GET", "/v1/effective/prod/pay") for i in range(1000)]
    results = await asyncio.gather(*calls)
    assert {status for status, _ in results} == {200}
    doc = await api_a.ok("POST", "/v1/audit/verify")
    assert doc["ok"] is True
    assert doc["checked"] >= 1000 + 4


async def test_calls_fail_closed_when_the_trail_cannot_be_written(
    make_client: ClientFactory, fresh_database: Any, admin: Identity, moto_endpoint: str
) -> None:
    api, dsn = await _fresh_app(make_client, fresh_database, admin, moto_endpoint)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ALTER TABLE audit_log ADD CONSTRAINT broken CHECK (false) NOT VALID")
        status, problem = await api.call("PUT", "/v1/nodes/prod/pay?parents=true")
        assert status == 503, problem
        assert "fail closed" in problem["detail"]
        assert await conn.fetchval("SELECT count(*) FROM nodes") == 0  # nothing changed
        status, _ = await api.call("GET", "/v1/auth/whoami")
        assert status == 503
    finally:
        await conn.execute("ALTER TABLE audit_log DROP CONSTRAINT broken")
        await conn.close()
    assert (await api.call("PUT", "/v1/nodes/prod/pay?parents=true"))[0] == 201


async def test_audit_list_filters(api: Api, reader_api: Api, reader: Identity) -> None:
    # The shared test database keeps earlier tests' rows (the trail is append-only).
    since = quote(datetime.now(UTC).isoformat())
    await api.ok("PUT", "/v1/nodes/prod/pay/eu?parents=true")
    await api.grant(reader.arn, "prod/pay", "read")
    await reader_api.effective("prod/pay/eu")
    await reader_api.call("DELETE", "/v1/nodes/prod/pay/eu")
    doc = await api.ok(
        "GET", f"/v1/audit?principal={reader.arn}&path=prod/pay&limit=10&since={since}"
    )
    assert [(r["action"], r["outcome"]) for r in doc["rows"]] == [
        ("node.delete", "denied"),
        ("node.delete", "attempt"),
        ("effective.read", "allowed"),
    ]
    assert {r["principal"] for r in doc["rows"]} == {reader.arn}
    denied = await api.ok("GET", "/v1/audit?outcome=denied&action=node.delete")
    assert denied["rows"]
    assert all(r["outcome"] == "denied" for r in denied["rows"])
    assert (await reader_api.call("GET", "/v1/audit"))[0] == 403
    assert (await api.call("GET", "/v1/audit?since=yesterday"))[0] == 400
