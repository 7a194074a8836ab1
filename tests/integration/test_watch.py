"""The long-poll hub against real PostgreSQL NOTIFY: wakes, timeouts, replicas, drops, adoption."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from kmsd.keys import ADOPTION, HUB, METRICS, WAKER
from tests.conftest import Identity
from tests.integration.conftest import Api, ClientFactory, FakeClock, eventually, sign_in

App = TestClient[web.Request, web.Application]


def held(client: App) -> int:
    return client.app[HUB].held


def body(path: str, version: int, instance: str = "i-1", **extra: Any) -> dict[str, Any]:
    return {"path": path, "path_version": version, "instance_id": instance, **extra}


async def poll(api: Api, path: str, version: int, hold: float = 60, **extra: Any) -> Any:
    return await api.call("POST", f"/v1/watch?timeout={hold}", json=body(path, version, **extra))


async def _tree(api: Api) -> int:
    await api.ok("PUT", "/v1/nodes/prod/pay/us/blue?parents=true")
    await api.ok("PUT", "/v1/nodes/prod/pay/eu?parents=true")
    await api.put_json("prod/pay/db", {"u": "1"})
    return int((await api.effective("prod/pay/us/blue"))["path_version"])


async def test_stale_version_is_answered_at_once(api: Api) -> None:
    version = await _tree(api)
    status, doc = await poll(api, "prod/pay/us/blue", version - 1)
    assert status == 200
    assert doc == await api.effective("prod/pay/us/blue")


async def test_short_poll(api: Api) -> None:
    version = await _tree(api)
    assert (await poll(api, "prod/pay/us/blue", version, hold=0))[0] == 304
    assert (await poll(api, "prod/pay/us/blue", version - 1, hold=0))[0] == 200


async def test_held_poll_is_woken_by_a_write_on_the_same_replica(api: Api, client: App) -> None:
    version = await _tree(api)
    waiting = asyncio.create_task(poll(api, "prod/pay/us/blue", version))
    await eventually(lambda: held(client) == 1)
    put = await api.put_json("prod/pay/us/db", {"u": "2"})
    status, doc = await waiting
    assert status == 200
    assert doc["path_version"] > version
    db = next(s for s in doc["secrets"] if s["name"] == "db")
    assert (db["source"], db["versions"][0]["version_id"]) == ("prod/pay/us", put["version_id"])
    assert held(client) == 0


async def test_held_poll_is_woken_by_a_write_through_another_replica(
    api: Api, make_client: ClientFactory, admin: Identity, moto_endpoint: str
) -> None:
    version = await _tree(api)
    other = await make_client()
    other_api = await sign_in(other, admin, moto_endpoint)
    waiting = asyncio.create_task(poll(other_api, "prod/pay/us/blue", version))
    await eventually(lambda: held(other) == 1)
    await api.put_json("prod/pay/us/blue/tls", {"pem": "x"})
    status, doc = await waiting
    assert status == 200
    assert [s["name"] for s in doc["secrets"]] == ["db", "tls"]


async def test_unaffected_paths_are_not_woken(api: Api, client: App) -> None:
    await _tree(api)
    eff = {p: (await api.effective(p))["path_version"] for p in ("prod/pay/us/blue", "prod/pay/eu")}
    sibling = asyncio.create_task(poll(api, "prod/pay/eu", eff["prod/pay/eu"]))
    target = asyncio.create_task(poll(api, "prod/pay/us/blue", eff["prod/pay/us/blue"]))
    await eventually(lambda: held(client) == 2)
    wakes_before = client.app[METRICS].wakes._value.get()
    await api.put_json("prod/pay/us/db", {"u": "3"})
    assert (await target)[0] == 200
    # The sibling's path did not change: it is still held, and exactly one poll was woken.
    assert not sibling.done()
    assert held(client) == 1
    assert client.app[METRICS].wakes._value.get() - wakes_before == 1
    sibling.cancel()


async def test_timeout_answers_304(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str
) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock)
    api = await sign_in(client, admin, moto_endpoint)
    version = await _tree(api)
    waiting = asyncio.create_task(poll(api, "prod/pay/us/blue", version, hold=120))
    await eventually(lambda: held(client) == 1)
    clock.advance(100)  # inside the hold (jitter shortens it by at most 10%)
    assert client.app[HUB].expire_due() == 0
    clock.advance(21)
    assert client.app[HUB].expire_due() == 1
    status, doc = await waiting
    assert (status, doc) == (304, None)


async def test_deleted_path_answers_404(api: Api, client: App) -> None:
    version = await _tree(api)
    waiting = asyncio.create_task(poll(api, "prod/pay/us/blue", version))
    await eventually(lambda: held(client) == 1)
    await api.ok("DELETE", "/v1/nodes/prod/pay/us?recursive=true")
    status, problem = await waiting
    assert status == 404
    assert "deleted" in problem["detail"]


async def test_dropped_listen_connection_moves_polls_and_loses_no_change(
    api: Api, client: App, db: asyncpg.Connection, pg_server_dsn: str
) -> None:
    version = await _tree(api)
    waker = client.app[WAKER]
    admin_conn = await asyncpg.connect(pg_server_dsn)  # ALTER DATABASE must come from elsewhere
    waiting = asyncio.create_task(poll(api, "prod/pay/us/blue", version))
    await eventually(lambda: held(client) == 1)
    database = await db.fetchval("SELECT current_database()")
    pid = waker._conn.get_server_pid()  # type: ignore[union-attr]
    reconnects = client.app[METRICS].listen_reconnects._value.get()
    # Keep the replica from reconnecting until the change below has committed.
    await admin_conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    try:
        assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
        # Deaf, the replica could not wake the poll: it is answered at once, to re-poll
        # elsewhere, and a new hold is refused the same way.
        status, problem = await waiting
        assert status == 503, problem
        assert problem["retry_after"] >= 1
        status, problem = await poll(api, "prod/pay/us/blue", version)
        assert status == 503
        assert "change feed" in problem["detail"]
        async with client.get("/healthz") as resp:
            assert resp.status == 503
            assert (await resp.json())["listen"] is False
        # A write by another replica commits while nobody listens here: its NOTIFY is lost.
        async with db.transaction():
            await db.execute(
                "UPDATE nodes SET changed_seq = nextval('kmsd_change_seq') WHERE path = $1",
                "prod/pay/us/blue",
            )
            await db.execute(
                "INSERT INTO changes (path) VALUES ('prod/pay/us/blue');"
                " NOTIFY kmsd_changes, 'lost'"
            )
    finally:
        await admin_conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin_conn.close()
    # Back and resynced, a poll from the old version sees the change it never heard of.
    async with asyncio.timeout(15):
        while True:
            status, doc = await poll(api, "prod/pay/us/blue", version, hold=5)
            if status != 503:
                break
            await asyncio.sleep(0.05)
    assert status == 200
    assert doc["path_version"] > version
    assert client.app[METRICS].listen_reconnects._value.get() == reconnects + 1


@pytest.mark.parametrize(
    ("query", "payload"),
    [
        ("", {"path": "prod", "path_version": 0, "instance_id": "i"}),
        ("", {"path": "prod/Pay", "path_version": 0, "instance_id": "i"}),
        ("", {"path_version": 0, "instance_id": "i"}),
        ("", {"path": "prod/pay", "path_version": -1, "instance_id": "i"}),
        ("", {"path": "prod/pay", "path_version": "7", "instance_id": "i"}),
        ("", {"path": "prod/pay", "path_version": True, "instance_id": "i"}),
        ("", {"path": "prod/pay", "path_version": 0}),
        ("", {"path": "prod/pay", "path_version": 0, "instance_id": "bad id"}),
        ("", {"path": "prod/pay", "path_version": 0, "instance_id": "i", "held": {"DB": "v"}}),
        ("", {"path": "prod/pay", "path_version": 0, "instance_id": "i", "held": {"db": 5}}),
        ("", {"path": "prod/pay", "path_version": 0, "instance_id": "i", "app_process_ids": "1"}),
        ("?timeout=-1", {"path": "prod/pay", "path_version": 0, "instance_id": "i"}),
        ("?timeout=soon", {"path": "prod/pay", "path_version": 0, "instance_id": "i"}),
        ("?timeout=nan", {"path": "prod/pay", "path_version": 0, "instance_id": "i"}),
    ],
)
async def test_malformed_watch_is_400_and_holds_nothing(
    api: Api, client: App, db: asyncpg.Connection, query: str, payload: dict[str, Any]
) -> None:
    await _tree(api)
    status, problem = await api.call("POST", f"/v1/watch{query}", json=payload)
    assert status == 400, problem
    assert held(client) == 0
    assert await client.app[ADOPTION].flush() == 0
    assert await db.fetchval("SELECT count(*) FROM adoption") == 0


async def test_watch_of_missing_path_is_404(api: Api, client: App) -> None:
    await _tree(api)
    assert (await poll(api, "prod/pay/nowhere", 0))[0] == 404
    assert held(client) == 0


async def test_adoption_reflects_polls_and_marks_stale_instances(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str
) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock)
    api = await sign_in(client, admin, moto_endpoint)
    version = await _tree(api)
    doc = await api.effective("prod/pay/us/blue")
    db_version = doc["secrets"][0]["versions"][0]["version_id"]
    await poll(
        api,
        "prod/pay/us/blue",
        version,
        hold=0,
        instance="i-old",
        held={"db": db_version},
        app_process_ids=[101, "web-2"],
    )
    clock.advance(3 * 180 + 1)
    await poll(api, "prod/pay/us/blue", version, hold=0, instance="i-new", held={"db": db_version})
    report = await api.ok("GET", "/v1/adoption/prod/pay/us/blue")
    by_id = {i["instance_id"]: i for i in report["instances"]}
    assert by_id["i-old"]["app_process_ids"] == ["101", "web-2"]
    assert by_id["i-old"]["ip"] == "127.0.0.1"
    assert (by_id["i-old"]["stale"], by_id["i-new"]["stale"]) == (True, False)
    assert report["counts"] == {"instances": 2, "live": 1, "stale": 1, "observers": 0}
    (version_row,) = report["secrets"][0]["versions"]
    assert version_row["stage"] == "current"
    assert (version_row["count"], version_row["live"], version_row["stale"]) == (2, 1, 1)


async def test_adoption_shows_what_each_app_process_read(api: Api) -> None:
    version = await _tree(api)
    doc = await api.effective("prod/pay/eu")
    db_version = doc["secrets"][0]["versions"][0]["version_id"]
    reads = {"4242": {"db": db_version}, "web-7": {}}
    await poll(api, "prod/pay/eu", version, hold=0, instance="i-a", processes=reads)
    await poll(api, "prod/pay/eu", version, hold=0, instance="i-b")
    report = await api.ok("GET", "/v1/adoption/prod/pay/eu")
    by_id = {i["instance_id"]: i for i in report["instances"]}
    assert by_id["i-a"]["processes"] == reads
    assert by_id["i-a"]["app_process_ids"] == ["4242", "web-7"]
    assert by_id["i-b"]["processes"] == {}


async def test_adoption_merges_what_all_replicas_flushed(
    api: Api, make_client: ClientFactory, admin: Identity, moto_endpoint: str
) -> None:
    version = await _tree(api)
    other = await sign_in(await make_client(), admin, moto_endpoint)
    await poll(api, "prod/pay/eu", version, hold=0, instance="i-a")
    await poll(other, "prod/pay/eu", version, hold=0, instance="i-b")
    await other.client.app[ADOPTION].flush()
    report = await api.ok("GET", "/v1/adoption/prod/pay/eu")
    assert sorted(i["instance_id"] for i in report["instances"]) == ["i-a", "i-b"]
    assert len({i["replica"] for i in report["instances"]}) == 1  # same host:pid in tests


async def test_shutdown_answers_held_polls_with_retry_after(api: Api, client: App) -> None:
    version = await _tree(api)
    waiting = asyncio.create_task(
        api.client.post(
            "/v1/watch?timeout=60", json=body("prod/pay/eu", version), headers=api.headers
        )
    )
    await eventually(lambda: held(client) == 1)
    assert client.app[HUB].close() == 1
    resp = await waiting
    assert resp.status == 503
    assert 1 <= int(resp.headers["Retry-After"]) <= 5
    assert (await resp.json(content_type=None))["type"].endswith("/shutting-down")
    resp.release()
    # New polls are refused the same way.
    status, _ = await poll(api, "prod/pay/eu", version)
    assert status == 503


async def test_snapshot_cache_is_bounded(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str
) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock)
    api = await sign_in(client, admin, moto_endpoint)
    version = await _tree(api)
    hub = client.app[HUB]
    for missing in range(5):  # unknown paths are answered 404 and leave nothing cached
        assert (await poll(api, f"prod/pay/nowhere-{missing}", 0))[0] == 404
    assert (await poll(api, "prod/pay/eu", version, hold=0))[0] == 304
    clock.advance(599)
    assert hub.evict_idle() == 0
    clock.advance(2)
    assert hub.evict_idle() == 1  # only prod/pay/eu was ever cached


async def test_changes_committed_out_of_id_order_are_not_lost(
    api: Api, client: App, database_url: str
) -> None:
    """Transaction A takes a change id, B takes the next one; A must not be skipped."""
    from kmsd.db import store
    from kmsd.db.changes import record_change

    version = await _tree(api)
    waiting = asyncio.create_task(poll(api, "prod/pay/us/blue", version))
    await eventually(lambda: held(client) == 1)
    a, b = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        tx_a = a.transaction()
        await tx_a.start()
        node = await a.fetchrow(store.GET_NODE, "prod/pay/us/blue")
        await record_change(a, "prod/pay/us/blue", node["id"])

        async def other_change() -> None:
            async with b.transaction():
                await record_change(b, "prod/pay/eu")

        later = asyncio.create_task(other_change())
        waiting_for_lock = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )
        # Either B queues behind A (ids commit in order) or - without the lock - commits first.
        async with asyncio.timeout(10):
            while not later.done() and await a.fetchval(waiting_for_lock) == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        await tx_a.commit()
        await later
    finally:
        await a.close()
        await b.close()
    status, doc = await asyncio.wait_for(waiting, 10)
    assert status == 200
    assert doc["path_version"] > version


async def test_a_poll_the_client_hangs_up_on_is_logged_as_499(api: Api, client: App) -> None:
    version = await _tree(api)
    waiting = asyncio.create_task(
        api.client.post(
            "/v1/watch?timeout=60", json=body("prod/pay/eu", version), headers=api.headers
        )
    )
    await eventually(lambda: held(client) == 1)
    waiting.cancel()  # the client goes away mid-hold
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await eventually(lambda: held(client) == 0)
    requests = client.app[METRICS].requests
    await eventually(lambda: requests.labels("POST", "/v1/watch", "499")._value.get() == 1)
    assert requests.labels("POST", "/v1/watch", "500")._value.get() == 0
