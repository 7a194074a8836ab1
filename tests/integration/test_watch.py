"""The long-poll hub against real PostgreSQL NOTIFY: wakes, timeouts, replicas, drops, adoption."""

from __future__ import annotations

import asyncio
import io
from datetime import timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from kmsd.domain.watch import WATCH_MAX_BODY, reports_digest
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


async def test_a_flush_returns_only_once_the_one_in_flight_is_written(
    api: Api, client: App, db: asyncpg.Connection
) -> None:
    """GET /v1/adoption and the tests flush, then read: the periodic flush may hold the batch."""
    version = await _tree(api)
    assert (await poll(api, "prod/pay/eu", version, hold=0))[0] == 304
    buffer = client.app[ADOPTION]
    in_flight = asyncio.ensure_future(buffer.flush())  # as the periodic flusher would
    await eventually(lambda: not buffer._pending)  # it has taken the report
    assert await buffer.flush() == 0  # nothing left to write ...
    assert in_flight.done()  # ... and it waited for what was being written
    assert await in_flight == 1
    assert await stored(db, "prod/pay/eu") is not None


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


# -- reports in full, or by their digest ------------------------------------------------------


def big_reports(count: int) -> dict[str, Any]:
    """The reports of an instance of an application with ``count`` secrets."""
    held = {f"s{i:05d}": f"{i:08d}-0000-4000-8000-000000000000" for i in range(count)}
    return {
        "held": held,
        "versions": {name: [vid, f"{vid[:-1]}1"] for name, vid in held.items()},
        "processes": {"4242": dict(list(held.items())[:10])},
    }


async def stored(conn: asyncpg.Connection, path: str, instance: str = "i-1") -> Any:
    return await conn.fetchrow(
        "SELECT held::text AS held, versions::text AS versions, processes::text AS processes,"
        " reports_digest, path_version, last_seen FROM adoption"
        " WHERE path = $1 AND instance_id = $2",
        path,
        instance,
    )


async def test_reports_of_1500_secrets_are_taken_once_then_named_by_their_digest(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str, db: asyncpg.Connection
) -> None:
    clock = FakeClock()
    client = await make_client(clock=clock)
    api = await sign_in(client, admin, moto_endpoint)
    version = await _tree(api)
    reports = big_reports(1500)
    status, problem = await poll(api, "prod/pay/eu", version, hold=0, **reports)
    assert status == 304, problem  # an old agent's full report, > 1,000 secrets: taken
    await client.app[ADOPTION].flush()
    first = await stored(db, "prod/pay/eu")
    assert orjson.loads(first["held"]) == reports["held"]
    assert orjson.loads(first["versions"]) == reports["versions"]
    digest = reports_digest(reports)
    assert first["reports_digest"] == digest

    clock.advance(30)
    status, _ = await poll(api, "prod/pay/eu", version, hold=0, reports_digest=digest)
    assert status == 304
    await client.app[ADOPTION].flush()
    later = await stored(db, "prod/pay/eu")
    assert later["last_seen"] == first["last_seen"] + timedelta(seconds=30)  # live...
    assert (later["held"], later["versions"], later["processes"]) == (
        first["held"],
        first["versions"],
        first["processes"],
    )  # ...and its reports are the ones sent in full
    report = await api.ok("GET", "/v1/adoption/prod/pay/eu")
    assert report["instances"][0]["processes"] == reports["processes"]


async def test_a_digest_kmsd_does_not_hold_is_answered_at_once_and_holds_nothing(
    api: Api, client: App, db: asyncpg.Connection
) -> None:
    version = await _tree(api)
    reports = {"held": {"db": "v1"}, "versions": {"db": ["v1"]}, "processes": {}}
    status, problem = await poll(
        api, "prod/pay/eu", version, reports_digest=reports_digest(reports)
    )
    assert status == 409, problem
    assert problem["type"].endswith("/reports-unknown")
    assert held(client) == 0
    assert await client.app[ADOPTION].flush() == 0
    assert await db.fetchval("SELECT count(*) FROM adoption") == 0
    # The agent sends the reports in full; from then on the digest is enough.
    assert (await poll(api, "prod/pay/eu", version, hold=0, **reports))[0] == 304
    digest = reports_digest(reports)
    assert (await poll(api, "prod/pay/eu", version, hold=0, reports_digest=digest))[0] == 304
    # Other reports of the same instance, or the same reports of another instance: unknown.
    other = reports_digest({**reports, "held": {"db": "v2"}})
    assert (await poll(api, "prod/pay/eu", version, reports_digest=other))[0] == 409
    status, _ = await poll(api, "prod/pay/eu", version, instance="i-2", reports_digest=digest)
    assert status == 409


async def test_a_digest_is_checked_against_what_any_replica_has_stored(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str, db: asyncpg.Connection
) -> None:
    clock = FakeClock()
    a = await sign_in(await make_client(clock=clock), admin, moto_endpoint)
    b = await sign_in(await make_client(clock=clock), admin, moto_endpoint)
    version = await _tree(a)
    reports = big_reports(3)
    digest = reports_digest(reports)
    assert (await poll(a, "prod/pay/eu", version, hold=0, **reports))[0] == 304
    # Still in A's buffer: B cannot know it yet, and says so (one more full report).
    assert (await poll(b, "prod/pay/eu", version, hold=0, reports_digest=digest))[0] == 409
    await a.client.app[ADOPTION].flush()
    clock.advance(60)
    assert (await poll(b, "prod/pay/eu", version, hold=0, reports_digest=digest))[0] == 304
    await b.client.app[ADOPTION].flush()
    row = await stored(db, "prod/pay/eu")
    assert orjson.loads(row["held"]) == reports["held"]
    assert row["last_seen"] == clock.now()  # B's poll refreshed the row A wrote


async def test_a_digest_poll_before_the_flush_keeps_the_full_report(
    api: Api, client: App, db: asyncpg.Connection
) -> None:
    version = await _tree(api)
    reports = big_reports(3)
    assert (await poll(api, "prod/pay/eu", version, hold=0, **reports))[0] == 304
    digest = reports_digest(reports)
    assert (await poll(api, "prod/pay/eu", 0, hold=0, reports_digest=digest))[0] == 200
    assert await client.app[ADOPTION].flush() == 1
    row = await stored(db, "prod/pay/eu")
    assert orjson.loads(row["held"]) == reports["held"]
    assert row["path_version"] == 0  # the digest poll's, over the full report's


async def test_a_forgotten_instance_is_not_revived_by_its_digest(
    api: Api,
    client: App,
    make_client: ClientFactory,
    admin: Identity,
    moto_endpoint: str,
    db: asyncpg.Connection,
) -> None:
    version = await _tree(api)
    other = await sign_in(await make_client(), admin, moto_endpoint)
    reports = big_reports(3)
    digest = reports_digest(reports)
    assert (await poll(api, "prod/pay/eu", version, hold=0, **reports))[0] == 304
    await client.app[ADOPTION].flush()
    # Taken, not flushed yet, when an operator forgets the instance through another replica.
    assert (await poll(api, "prod/pay/eu", version, hold=0, reports_digest=digest))[0] == 304
    await other.ok("DELETE", "/v1/adoption/prod/pay/eu?instance=i-1")
    await client.app[ADOPTION].flush()
    assert await db.fetchval("SELECT count(*) FROM adoption") == 0  # no row without reports
    assert (await poll(api, "prod/pay/eu", version, hold=0, reports_digest=digest))[0] == 409


async def test_a_watch_body_may_be_larger_than_other_bodies_up_to_its_own_limit(
    api: Api, client: App
) -> None:
    version = await _tree(api)

    async def send(method: str, url: str, doc: dict[str, Any]) -> tuple[int, Any]:
        raw = io.BytesIO(orjson.dumps(doc))  # aiohttp wants large bodies as a stream
        return await api.call(method, url, data=raw, headers={"Content-Type": "application/json"})

    reports = big_reports(12_000)  # over the 1 MiB every other call is held to
    assert len(orjson.dumps(reports)) > 1024 * 1024
    status, _ = await send("POST", "/v1/watch?timeout=0", body("prod/pay/eu", version, **reports))
    assert status == 304
    put = {"kind": "json", "value": reports["held"]}
    assert (await send("PUT", "/v1/secrets/prod/pay/big", put))[0] == 413
    huge = body("prod/pay/eu", version, held={"s": "x" * WATCH_MAX_BODY})
    status, problem = await send("POST", "/v1/watch?timeout=0", huge)
    assert status == 413, problem
    assert problem["type"].endswith("/payload-too-large")
    assert held(client) == 0
