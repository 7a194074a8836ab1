"""Single-use sign-ins: one signed GetCallerIdentity yields one token, on any replica.

A captured body is good for 15 minutes by its X-Amz-Date; without this, its holder could sign
in again and again from anywhere within that window (kmsd.domain.signin, kmsd.db.signins).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import Identity, free_port
from tests.integration.conftest import ClientFactory, login_body

Client = TestClient[web.Request, web.Application]
REPLAYED = "this signed sign-in request was already used"


async def _login(client: Client, body: dict[str, str]) -> tuple[int, Any]:
    async with client.post("/v1/auth/aws/login", json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_same_body_twice_is_refused_the_second_time(
    client: Client, admin: Identity, moto_endpoint: str, db: asyncpg.Connection
) -> None:
    body = login_body(admin, moto_endpoint)
    status, doc = await _login(client, body)
    assert status == 200, doc
    status, problem = await _login(client, body)
    assert status == 401, problem
    assert problem["detail"] == REPLAYED
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1
    # Only the hash of the signature is kept, never the signature or the request.
    stored = await db.fetchval("SELECT count(*) FROM signin_seen WHERE length(sig_hash) = 32")
    assert stored >= 1


async def test_replay_is_audited_as_a_refused_sign_in(
    client: Client, admin: Identity, moto_endpoint: str, db: asyncpg.Connection
) -> None:
    body = login_body(admin, moto_endpoint)
    assert (await _login(client, body))[0] == 200
    async with client.post("/v1/auth/aws/login", json=body) as resp:
        assert resp.status == 401
        request_id = resp.headers["X-Request-Id"]
    row = await db.fetchrow(
        "SELECT action, principal, claimed, outcome, status FROM audit_log WHERE request_id = $1",
        request_id,
    )
    assert row is not None
    assert dict(row) == {
        "action": "auth.login",
        "principal": "-",
        "claimed": admin.access_key,
        "outcome": "denied",
        "status": 401,
    }


async def test_two_bodies_both_sign_in(
    client: Client, admin: Identity, reader: Identity, moto_endpoint: str
) -> None:
    for who in (admin, reader):
        status, doc = await _login(client, login_body(who, moto_endpoint))
        assert status == 200, doc


async def test_second_replica_refuses_the_replay(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str
) -> None:
    first, second = await make_client(), await make_client()
    body = login_body(admin, moto_endpoint)
    assert (await _login(first, body))[0] == 200
    status, problem = await _login(second, body)
    assert status == 401, problem
    assert problem["detail"] == REPLAYED


async def test_concurrent_replays_yield_one_token(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str, db: asyncpg.Connection
) -> None:
    replicas = [await make_client() for _ in range(2)]
    body = login_body(admin, moto_endpoint)
    results = await asyncio.gather(*(_login(replicas[i % 2], body) for i in range(6)))
    assert sorted(status for status, _ in results) == [200] + [401] * 5, results
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1


async def test_failed_forwarding_still_spends_the_signature(
    make_client: ClientFactory, admin: Identity
) -> None:
    # moto answers every GetCallerIdentity, so STS's own refusal cannot be staged without a
    # fake; an STS that cannot be reached shows the same order: the key is recorded before
    # anything is sent, and a signature is single-use whatever happened to its first use.
    dead_sts = f"http://127.0.0.1:{free_port()}"
    client = await make_client(sts_endpoint=dead_sts)
    body = login_body(admin, dead_sts)
    status, problem = await _login(client, body)
    assert status == 502, problem
    status, problem = await _login(client, body)
    assert status == 401, problem
    assert problem["detail"] == REPLAYED


async def test_refused_checks_do_not_spend_a_signature(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str
) -> None:
    # A body refused before the key is recorded (here: another server's id) is not recorded:
    # only a request that passed every check can be spent.
    other = await make_client(server_id="another-kmsd")
    body = login_body(admin, moto_endpoint)
    status, problem = await _login(other, body)
    assert status == 401
    assert "does not match" in problem["detail"]
    client = await make_client()
    assert (await _login(client, body))[0] == 200


async def test_purge_keeps_fresh_keys(
    client: Client, admin: Identity, moto_endpoint: str, db: asyncpg.Connection
) -> None:
    from kmsd.db.signins import PURGE_EXPIRED

    body = login_body(admin, moto_endpoint)
    assert (await _login(client, body))[0] == 200
    await db.execute("INSERT INTO signin_seen VALUES ($1, now() - interval '1 second')", b"x" * 32)
    await db.execute(PURGE_EXPIRED)
    assert await db.fetchval("SELECT count(*) FROM signin_seen WHERE sig_hash = $1", b"x" * 32) == 0
    assert (await _login(client, body))[0] == 401  # the fresh key survived the purge
