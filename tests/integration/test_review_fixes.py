"""Regression tests for defects found in review (each fails without its fix)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from multidict import CIMultiDict

from kmsd.aws.sm import secrets_writer
from kmsd.config import Settings
from kmsd.db import store
from kmsd.db.changes import record_change
from kmsd.domain.access import parse_cidrs
from kmsd.domain.names import NodePath
from kmsd.services import writes
from kmsd.services.reconcile import reconcile
from tests.conftest import Identity, free_port
from tests.integration.conftest import Api, ClientFactory, eventually, login_body, sign_in


async def test_a_hostile_request_id_cannot_stop_the_audit_writer(api: Api) -> None:
    # A byte that is not UTF-8 in X-Request-Id, on a call that writes an attempt row.
    host, port = api.client.server.host, api.client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /v1/nodes/prod HTTP/1.1\r\nHost: x\r\nX-Request-Id: ab\xffcd\r\n"
        b"Authorization: " + api.headers["Authorization"].encode() + b"\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 405") or answer.startswith(b"HTTP/1.1 4")
    assert b"ab\xffcd" not in answer
    body = login_body(Identity("", "AKID\x00X", "secret"), "http://127.0.0.1:1")
    async with api.client.post("/v1/auth/aws/login", json=body) as resp:
        assert resp.status == 401
    async with asyncio.timeout(10):  # the writer still runs: calls are still answered
        assert (await api.call("GET", "/v1/auth/whoami"))[0] == 200


async def test_no_attempt_rows_for_calls_outside_the_api(api: Api, db: asyncpg.Connection) -> None:
    before = await db.fetchval("SELECT count(*) FROM audit_log")
    async with api.client.post("/not-the-api") as resp:
        assert resp.status in (401, 404)
    assert await db.fetchval("SELECT count(*) FROM audit_log") == before


async def test_underscore_in_a_name_is_not_a_wildcard(
    api: Api, settings: Settings, sm_client: Any
) -> None:
    await api.ok("PUT", "/v1/nodes/prod/my_app?parents=true")
    await api.ok("PUT", "/v1/nodes/prod/my-app/us?parents=true")
    other = await api.put_json("prod/my-app/us/db", {"a": "b"})
    # Nothing to grant (409): prod/my-app's secret is not prod/my_app's.
    assert (await api.call("GET", "/v1/iam-policy/app/prod/my_app?shape=exact"))[0] == 409
    await api.ok("DELETE", "/v1/nodes/prod/my_app")  # empty: allowed without recursion
    described = sm_client.describe_secret(SecretId=other["sm_arn"])
    assert described.get("DeletedDate") is None


async def test_a_stale_pending_deletion_spares_a_re_created_secret(
    make_client: ClientFactory,
    admin: Identity,
    moto_endpoint: str,
    settings: Settings,
    sm_client: Any,
    db: asyncpg.Connection,
) -> None:
    good = await sign_in(await make_client(), admin, moto_endpoint)
    await good.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    await good.put_json("prod/pay/db", {"v": "1"})
    # The deletion's SM call fails (SM unreachable): its outbox row stays behind.
    broken = await sign_in(
        await make_client(aws_endpoint_url=f"http://127.0.0.1:{free_port()}"),
        admin,
        moto_endpoint,
    )
    await broken.ok("DELETE", "/v1/secrets/prod/pay/db")
    assert await db.fetchval("SELECT count(*) FROM sm_outbox WHERE op = 'delete'") == 1
    recreated = await good.put_json("prod/pay/db", {"v": "2"})
    async with secrets_writer(settings) as sm:
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
        try:
            await writes.drain_deletions(pool, sm)
            await reconcile(pool, sm, __import__("datetime").timedelta(0))
        finally:
            await pool.close()
    assert sm_client.describe_secret(SecretId=recreated["sm_arn"]).get("DeletedDate") is None
    assert await db.fetchval("SELECT count(*) FROM sm_outbox") == 0


async def test_path_versions_follow_commit_order(api: Api, database_url: str) -> None:
    await api.ok("PUT", "/v1/nodes/prod/pay/us?parents=true")
    a, b = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        app = await a.fetchrow(store.GET_NODE, "prod/pay")
        region = await a.fetchrow(store.GET_NODE, "prod/pay/us")
        tx_a = a.transaction()
        await tx_a.start()
        await record_change(a, "prod/pay", app["id"])  # drew its number first

        async def later_change() -> None:
            async with b.transaction():
                await record_change(b, "prod/pay/us", region["id"])

        task = asyncio.create_task(later_change())
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        async with asyncio.timeout(10):
            while not task.done() and await a.fetchval(waiting) == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        seen_between = (await api.effective("prod/pay/us"))["path_version"]
        await tx_a.commit()
        await task
    finally:
        await a.close()
        await b.close()
    # Whatever a reader saw before A committed, A's change must move the version past it.
    assert (await api.effective("prod/pay/us"))["path_version"] > seen_between


async def test_a_forwarded_for_line_added_by_the_proxy_wins(
    make_client: ClientFactory, reader: Identity, api: Api, moto_endpoint: str
) -> None:
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    await api.grant(reader.arn, "prod/pay", "read", cidrs=["10.0.0.0/8"])
    client = await make_client(trusted_proxies=parse_cidrs(["127.0.0.1/32"]), bind_token_ip=False)
    proxied = await sign_in(client, reader, moto_endpoint)
    # The client forges a first line; the proxy appends its own line with the real address.
    headers = CIMultiDict([("X-Forwarded-For", "10.9.9.9"), ("X-Forwarded-For", "192.168.7.7")])
    status, _ = await proxied.call("GET", "/v1/effective/prod/pay", headers=headers)
    assert status == 403


async def test_namespace_delete_and_re_creation_reach_watchers(api: Api, client: Any) -> None:
    from kmsd.keys import HUB

    await api.ok("PUT", "/v1/nodes/prod/pay/us?parents=true")
    version = (await api.effective("prod/pay/us"))["path_version"]
    body = {"path": "prod/pay/us", "path_version": version, "instance_id": "i-1"}
    waiting = asyncio.create_task(api.call("POST", "/v1/watch?timeout=60", json=body))
    await eventually(lambda: client.app[HUB].held == 1)
    await api.ok("DELETE", "/v1/nodes/prod?recursive=true")
    assert (await waiting)[0] == 404
    await api.ok("PUT", "/v1/nodes/prod/pay/us?parents=true")
    await eventually(lambda: True)
    status = 404
    async with asyncio.timeout(10):  # the re-created path is not stuck as "gone"
        while status == 404:
            status, _ = await api.call(
                "POST", "/v1/watch?timeout=0", json={**body, "path_version": 0}
            )
    assert status == 200


async def test_another_principal_cannot_speak_for_a_live_instance(
    api: Api, reader_api: Api, reader: Identity, client: Any
) -> None:
    from kmsd.keys import ADOPTION

    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    await api.grant(reader.arn, "prod/pay", "read")
    body = {"path": "prod/pay", "path_version": 0, "instance_id": "i-1", "held": {"db": "v-new"}}
    await api.call("POST", "/v1/watch?timeout=0", json={**body, "held": {"db": "v-old"}})
    await client.app[ADOPTION].flush()
    await reader_api.call("POST", "/v1/watch?timeout=0", json=body)
    await client.app[ADOPTION].flush()
    report = await api.ok("GET", "/v1/adoption/prod/pay")
    (instance,) = report["instances"]
    assert instance["principal"] != reader.arn
    assert report["secrets"][0]["versions"][0]["version_id"] == "v-old"


async def test_verify_notices_rows_cut_off_the_end(
    make_client: ClientFactory, fresh_database: Any, admin: Identity, moto_endpoint: str
) -> None:
    import uuid

    dsn = await asyncio.to_thread(fresh_database, f"tail_{uuid.uuid4().hex[:8]}")
    api = await sign_in(await make_client(database_url=dsn), admin, moto_endpoint)
    await api.ok("GET", "/v1/auth/whoami")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete")
        await conn.execute("DELETE FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log)")
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_delete")
    finally:
        await conn.close()
    doc = await api.ok("POST", "/v1/audit/verify")
    assert (doc["ok"], doc["first_broken_seq"]) == (False, 2)


def test_a_put_request_never_shows_its_value() -> None:
    req = writes.PutRequest(NodePath.parse("a/b"), "db", "json", '{"p": "hunter2"}', "me")
    assert "hunter2" not in repr(req)


async def test_healthz_reports_a_lost_listen_connection(
    client: Any, db: asyncpg.Connection, pg_server_dsn: str
) -> None:
    from kmsd.keys import WAKER

    async with client.get("/healthz") as resp:
        assert resp.status == 200
    waker = client.app[WAKER]
    database = await db.fetchval("SELECT current_database()")
    admin_conn = await asyncpg.connect(pg_server_dsn)
    try:
        await admin_conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await db.fetchval("SELECT pg_terminate_backend($1)", waker._conn.get_server_pid())
        await eventually(lambda: not waker.connected.is_set())
        async with client.get("/healthz") as resp:
            doc = await resp.json()
            assert (resp.status, doc["listen"]) == (503, False)
    finally:
        await admin_conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin_conn.close()
    await eventually(waker.connected.is_set)
