"""Hostile inputs through the API (real PostgreSQL and moto): each refused at the edge, with the
right status, leaving nothing behind."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from tests.conftest import Identity
from tests.integration.conftest import Api, snapshot

PATH = "prod/pay"


async def _start(api: Api, name: str, **body: Any) -> tuple[int, Any]:
    return await api.call("POST", "/v1/rotations", json={"path": PATH, "name": name, **body})


async def test_rotate_alone_may_rotate_only_to_a_value_kmsd_makes(
    api: Api, reader_api: Api, reader: Identity, db: asyncpg.Connection
) -> None:
    await api.ok("PUT", f"/v1/nodes/{PATH}?parents=true")
    await api.put_json(f"{PATH}/db", {"password": "p"})
    await api.ok("POST", f"/v1/generate/{PATH}/signing", json={"use": "signing"})
    await api.grant(reader.arn, PATH, "rotate")
    # A plain put by this principal is refused; a rotation with a value of its choosing is a
    # put by another door, refused the same way, and changes nothing.
    status, _ = await reader_api.call("PUT", f"/v1/secrets/{PATH}/db", json={"value": {"a": "b"}})
    assert status == 403
    before = await snapshot(db)
    status, problem = await _start(reader_api, "db", value={"password": "mine"})
    assert status == 403, problem
    assert "edit" in problem["detail"]
    assert await snapshot(db) == before
    # A value kmsd generates by the secret's own spec is what rotate is for.
    status, rot = await _start(reader_api, "signing", generate=True)
    assert status == 201, rot
    # With edit too, a chosen value is fine.
    await api.grant(reader.arn, PATH, "edit")
    status, rot = await _start(reader_api, "db", value={"password": "mine"})
    assert status == 201, rot


async def test_a_rotation_value_over_64_kib_is_refused_before_anything_is_written(
    api: Api, db: asyncpg.Connection
) -> None:
    await api.ok("PUT", f"/v1/nodes/{PATH}?parents=true")
    await api.put_json(f"{PATH}/db", {"password": "p"})
    before = await snapshot(db)
    status, problem = await _start(api, "db", value={"blob": "x" * 70000})
    assert (status, problem["limit"]) == (413, 65536)
    status, problem = await _start(api, "db", value_b64="eA==" * 30000)
    assert status == 413, problem
    assert await snapshot(db) == before


async def test_an_instance_slot_belongs_to_its_principal_even_when_stale(
    api: Api, reader_api: Api, reader: Identity, client: Any, db: asyncpg.Connection
) -> None:
    from kmsd.keys import ADOPTION

    buffer = client.app[ADOPTION]
    await api.ok("PUT", f"/v1/nodes/{PATH}?parents=true")
    await api.grant(reader.arn, PATH, "read")

    def body(version: str) -> dict[str, Any]:
        return {"path": PATH, "path_version": 0, "instance_id": "i-victim", "held": {"db": version}}

    await api.call("POST", "/v1/watch?timeout=0", json=body("v-owner-1"))
    await buffer.flush()
    # The attacker polls under the victim's id between the victim's polls: the victim's own
    # newer report must still land (it is not replaced in the buffer by the attacker's).
    await api.call("POST", "/v1/watch?timeout=0", json=body("v-owner-2"))
    await reader_api.call("POST", "/v1/watch?timeout=0", json=body("v-fake"))
    await buffer.flush()
    report = await api.ok("GET", f"/v1/adoption/{PATH}")
    assert [(i["instance_id"], i["principal"]) for i in report["instances"]] == [
        ("i-victim", api_arn := report["instances"][0]["principal"])
    ]
    assert api_arn != reader.arn
    assert report["secrets"][0]["versions"][0]["version_id"] == "v-owner-2"
    # The victim goes silent for long past the staleness window: the slot is still its own.
    await db.execute("UPDATE adoption SET last_seen = now() - interval '1 day'")
    await reader_api.call("POST", "/v1/watch?timeout=0", json=body("v-fake"))
    await buffer.flush()
    row = await db.fetchrow("SELECT principal, held::text AS held FROM adoption")
    assert row is not None
    assert (row["principal"], "v-fake" in row["held"]) == (api_arn, False)


async def test_bodies_that_once_answered_500_are_refused(api: Api, db: asyncpg.Connection) -> None:
    await api.ok("PUT", f"/v1/nodes/{PATH}?parents=true")
    before = await snapshot(db)
    deep = b"[" * 300 + b"]" * 300
    cases = [
        # a compressed body is refused unread (no decoder errors, no decompression bombs)
        ({"Content-Encoding": "gzip"}, b"garbage!", 415),
        ({"Content-Encoding": "deflate"}, b"garbage!", 415),
        # nested past what any secret needs (the encoder would give up at 255 levels)
        ({}, b'{"kind": "json", "value": {"a": ' + deep + b"}}", 400),
    ]
    for extra, data, status in cases:
        headers = {
            **api.headers,
            **extra,
            "Content-Type": "application/json",
            "Connection": "close",
        }
        async with api.client.put(f"/v1/secrets/{PATH}/db", data=data, headers=headers) as resp:
            assert resp.status == status, (extra, await resp.text())
            assert resp.content_type == "application/problem+json"
    assert await snapshot(db) == before


async def test_audit_filters_at_the_edges_of_time_are_refused(api: Api) -> None:
    for query in ("since=0001-01-01T00:00:00%2B14:00", "until=9999-12-31T23:59:59-14:00"):
        status, problem = await api.call("GET", f"/v1/audit?{query}")
        assert (status, problem["status"]) == (400, 400), query
        assert "range" in problem["detail"]


async def test_ids_and_limits_take_ascii_digits_only(api: Api) -> None:
    status, _ = await api.call("GET", "/v1/rotations/\u0663")
    assert status == 404
    status, problem = await api.call("GET", "/v1/audit?limit=\uff15")
    assert status == 400
    assert "limit" in problem["detail"]


async def test_an_open_event_stream_ends_when_the_viewers_access_is_revoked(
    api: Api, reader_api: Api, reader: Identity, client: Any
) -> None:
    await api.ok("PUT", f"/v1/nodes/{PATH}?parents=true")
    await api.put_json(f"{PATH}/db", {"password": "p"})
    rot = await api.ok(
        "POST", "/v1/rotations", json={"path": PATH, "name": "db", "value": {"password": "n"}}
    )
    grant = await api.grant(reader.arn, PATH, "view")
    # The viewer's console session, from a one-time link (the cookie lands in the client's jar).
    link = await reader_api.ok("POST", "/v1/console/links")
    async with client.get(link["path"], allow_redirects=False) as opened:
        assert opened.status in (302, 303), opened.status
    async with client.get(f"/ui/rotations/{rot['id']}/events") as stream:
        assert stream.status == 200
        first = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 10)
        assert first.startswith(b"data: ")
        await api.ok("DELETE", f"/v1/bindings/{grant['id']}")
        # The rotation is still pending (the stream would run on): it ends for lack of access.
        rest = await asyncio.wait_for(stream.content.read(), 10)
    assert rest.endswith(b"event: end\ndata: access revoked\n\n"), rest[-200:]


async def test_a_rotation_of_an_application_one_cannot_see_is_not_found(
    api: Api, reader_api: Api, reader: Identity, db: asyncpg.Connection
) -> None:
    await api.ok("PUT", f"/v1/nodes/{PATH}?parents=true")
    await api.ok("PUT", "/v1/nodes/prod/other?parents=true")
    await api.put_json(f"{PATH}/db", {"password": "p"})
    rot = await api.ok(
        "POST", "/v1/rotations", json={"path": PATH, "name": "db", "value": {"password": "n"}}
    )
    await api.grant(reader.arn, "prod/other", "view")  # signed in, but nothing on prod/pay
    missing = await reader_api.call("GET", "/v1/rotations/999999")
    hidden = await reader_api.call("GET", f"/v1/rotations/{rot['id']}")
    assert (missing[0], hidden[0]) == (404, 404)
    assert hidden[1]["detail"] == f"rotation {rot['id']} does not exist"
    status, _ = await reader_api.call("POST", f"/v1/rotations/{rot['id']}/advance")
    assert status == 404
    # The trail still says what happened: denied, with the real target.
    row = await db.fetchrow(
        "SELECT outcome, status, target FROM audit_log WHERE action = 'rotation.read'"
        " ORDER BY seq DESC LIMIT 1"
    )
    assert row is not None
    assert (row["outcome"], row["status"]) == ("denied", 404)
    assert row["target"] == f"{PATH}/db rotation {rot['id']}"
    # With read on the application, the refusal of what it may not do is a plain 403.
    await api.grant(reader.arn, PATH, "read")

    async with asyncio.timeout(10):  # the bindings cache learns of the grant by NOTIFY
        while True:
            status = (await reader_api.call("GET", f"/v1/rotations/{rot['id']}"))[0]
            if status != 404:
                break
            await asyncio.sleep(0.02)
    assert status == 403


async def test_one_token_cannot_hold_more_polls_than_its_quota(
    make_client: Any, admin: Identity, moto_endpoint: str
) -> None:
    from kmsd.keys import HUB
    from tests.integration.conftest import eventually, sign_in

    client = await make_client(watch_max_per_token=2)
    api = await sign_in(client, admin, moto_endpoint)
    other = await sign_in(client, admin, moto_endpoint)  # the same principal, its own token
    await api.ok("PUT", f"/v1/nodes/{PATH}?parents=true")
    version = (await api.effective(PATH))["path_version"]
    body = {"path": PATH, "path_version": version, "instance_id": "i-1"}
    held = [
        asyncio.create_task(api.call("POST", "/v1/watch?timeout=30", json=body)) for _ in range(2)
    ]
    await eventually(lambda: client.app[HUB].held == 2)
    status, problem = await api.call("POST", "/v1/watch?timeout=30", json=body)
    assert (status, problem["status"]) == (429, 429)
    assert problem["retry_after"] == 5
    # Another token is not affected, and a change answers the held ones, freeing the quota.
    third = asyncio.create_task(other.call("POST", "/v1/watch?timeout=30", json=body))
    await eventually(lambda: client.app[HUB].held == 3)
    await api.put_json(f"{PATH}/db", {"password": "p"})
    assert [s for s, _ in await asyncio.gather(*held, third)] == [200, 200, 200]
    status, _ = await api.call("POST", "/v1/watch?timeout=0", json=body)
    assert status == 200
