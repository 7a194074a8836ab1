"""Access control over HTTP: bindings, CIDRs, proxies, token binding, and their audit rows."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from typing import Any

import asyncpg
import pytest

from tests.conftest import Identity
from tests.integration.conftest import Api, ClientFactory, sign_in

ACCOUNT = "123456789012"


async def _denied_row(db: asyncpg.Connection) -> dict[str, Any]:
    row = await db.fetchrow(
        "SELECT principal, action, target, outcome, status, source_ip FROM audit_log"
        " ORDER BY seq DESC LIMIT 1"
    )
    assert row is not None
    return dict(row)


async def _tree(api: Api) -> None:
    for path in ("prod/pay/us-east-1", "prod/shop/eu"):
        await api.ok("PUT", f"/v1/nodes/{path}?parents=true")


async def test_machine_binding_reads_its_prefix_only(
    api: Api, reader_api: Api, reader: Identity, db: asyncpg.Connection
) -> None:
    await _tree(api)
    await api.grant(f"arn:aws:iam::{ACCOUNT}:user/app-*", "prod/pay", "read")
    assert (await reader_api.call("GET", "/v1/effective/prod/pay/us-east-1"))[0] == 200
    status, problem = await reader_api.call("GET", "/v1/effective/prod/shop/eu")
    assert status == 403
    assert "no binding grants read" in problem["detail"]
    row = await _denied_row(db)
    assert (row["principal"], row["action"], row["target"], row["outcome"]) == (
        reader.arn,
        "effective.read",
        "prod/shop/eu",
        "denied",
    )
    status, _ = await reader_api.call(
        "POST",
        "/v1/watch?timeout=0",
        json={"path": "prod/shop/eu", "path_version": 0, "instance_id": "i-1"},
    )
    assert status == 403
    row = await _denied_row(db)
    assert (row["action"], row["target"], row["outcome"]) == ("watch", "prod/shop/eu", "denied")
    # read is for machines: no metadata, no writes.
    assert (await reader_api.call("GET", "/v1/nodes/prod/pay"))[0] == 403
    # A binding on prod/pay does not reach prod/payments.
    await api.ok("PUT", "/v1/nodes/prod/payments")
    assert (await reader_api.call("GET", "/v1/effective/prod/payments"))[0] == 403


async def test_view_cannot_write_and_edit_cannot_bind(
    api: Api, reader_api: Api, reader: Identity, db: asyncpg.Connection
) -> None:
    await _tree(api)
    await api.grant(reader.arn, "prod/pay", "view")
    assert (await reader_api.call("GET", "/v1/nodes/prod/pay"))[0] == 200
    status, _ = await reader_api.call(
        "PUT", "/v1/secrets/prod/pay/db", json={"kind": "json", "value": {"a": "b"}}
    )
    assert status == 403
    assert (await _denied_row(db))["action"] == "secret.put"
    await api.grant(reader.arn, "prod/pay", "edit")
    assert (await reader_api.call("PUT", "/v1/nodes/prod/pay/eu"))[0] == 201
    status, _ = await reader_api.call(
        "POST",
        "/v1/bindings",
        json={"principal": reader.arn, "path": "prod/pay", "permission": "admin"},
    )
    assert status == 403
    row = await _denied_row(db)
    assert (row["action"], row["target"], row["outcome"]) == ("binding.grant", "prod/pay", "denied")


@pytest.mark.parametrize(
    "pattern",
    [
        "arn:aws:iam::*:role/app",
        "arn:aws:iam::12345678901*:role/app",
        "arn:aws:iam:::role/app",
        "arn:aws:sts::123456789012:assumed-role/app/x",
        "arn:aws:iam::123456789012:group/app",
        "*",
    ],
)
async def test_wildcard_outside_the_name_is_refused_at_grant(
    api: Api, db: asyncpg.Connection, pattern: str
) -> None:
    await _tree(api)
    status, problem = await api.call(
        "POST",
        "/v1/bindings",
        json={"principal": pattern, "path": "prod/pay", "permission": "read"},
    )
    assert status == 400, problem
    assert await db.fetchval("SELECT count(*) FROM bindings") == 0


async def _proxied(make_client: ClientFactory, who: Identity, moto: str, **settings: Any) -> Api:
    from kmsd.domain.access import parse_cidrs

    trusted = parse_cidrs(["127.0.0.1/32"])
    client = await make_client(trusted_proxies=trusted, **settings)
    return await sign_in(client, who, moto)


def _from(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


async def test_binding_cidrs_and_forged_forwarded_for(
    api: Api,
    make_client: ClientFactory,
    reader: Identity,
    moto_endpoint: str,
    db: asyncpg.Connection,
) -> None:
    await _tree(api)
    await api.grant(reader.arn, "prod/pay", "read", cidrs=["10.0.0.0/8"])
    # Behind a trusted proxy (127.0.0.1) the forwarded address counts.
    proxied = await _proxied(make_client, reader, moto_endpoint, bind_token_ip=False)
    ok, _ = await proxied.call("GET", "/v1/effective/prod/pay", headers=_from("10.1.2.3"))
    assert ok == 200
    status, problem = await proxied.call(
        "GET", "/v1/effective/prod/pay", headers=_from("192.168.1.9")
    )
    assert status == 403
    assert "CIDR" in problem["detail"]
    assert (await _denied_row(db))["source_ip"] == "192.168.1.9"
    # From an untrusted peer the header is ignored: the forged 10.x address changes nothing.
    direct = await sign_in(await make_client(), reader, moto_endpoint)
    status, _ = await direct.call("GET", "/v1/effective/prod/pay", headers=_from("10.1.2.3"))
    assert status == 403
    assert (await _denied_row(db))["source_ip"] == "127.0.0.1"


async def test_a_longer_prefix_does_not_widen_a_shorter_ones_cidr_fence(
    api: Api, make_client: ClientFactory, reader: Identity, moto_endpoint: str
) -> None:
    await _tree(api)
    await api.grant(reader.arn, "prod/pay", "read", cidrs=["10.0.0.0/8"])
    await api.grant(reader.arn, "prod/pay/us-east-1", "read")
    proxied = await _proxied(make_client, reader, moto_endpoint, bind_token_ip=False)
    status, _ = await proxied.call(
        "GET", "/v1/effective/prod/pay/us-east-1", headers=_from("192.168.1.9")
    )
    assert status == 403


async def test_global_allowlist(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str, db: asyncpg.Connection
) -> None:
    from kmsd.domain.access import parse_cidrs

    api = await _proxied(
        make_client,
        admin,
        moto_endpoint,
        allowed_cidrs=parse_cidrs(["127.0.0.0/8"]),
        bind_token_ip=False,
    )
    assert (await api.call("GET", "/v1/auth/whoami", headers=_from("127.0.0.5")))[0] == 200
    status, problem = await api.call("GET", "/v1/auth/whoami", headers=_from("203.0.113.7"))
    assert status == 403
    assert "KMSD_ALLOWED_CIDRS" in problem["detail"]
    row = await _denied_row(db)
    assert (row["source_ip"], row["outcome"]) == ("203.0.113.7", "denied")
    # The fence covers every route: the console's pages, its login link, the event streams,
    # the API document and the metrics; only the load balancer's health check is outside it.
    outside = _from("203.0.113.7")
    for path in ("/ui/login?code=x", "/ui/rotations", "/ui/rotations/1/events", "/metrics"):
        async with api.client.get(path, headers=outside) as resp:
            assert resp.status == 403, path
            assert resp.content_type == "application/problem+json"
    async with api.client.get("/v1/openapi.json", headers=outside) as resp:
        assert resp.status == 403
    async with api.client.get("/healthz", headers=outside) as resp:
        assert resp.status == 200


async def test_token_is_bound_to_the_ip_that_signed_in(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str
) -> None:
    from kmsd.domain.access import parse_cidrs

    client = await make_client(trusted_proxies=parse_cidrs(["127.0.0.1/32"]))
    from tests.integration.conftest import login_body

    async with client.post(
        "/v1/auth/aws/login", json=login_body(admin, moto_endpoint), headers=_from("10.0.0.1")
    ) as resp:
        token = (await resp.json())["token"]
    api = Api(client, token)
    assert (await api.call("GET", "/v1/auth/whoami", headers=_from("10.0.0.1")))[0] == 200
    status, problem = await api.call("GET", "/v1/auth/whoami", headers=_from("10.0.0.2"))
    assert status == 401
    assert "another IP" in problem["detail"]


async def test_token_of_another_kmsd_is_refused(
    api: Api,
    make_client: ClientFactory,
    fresh_database: Any,
    admin: Identity,
    moto_endpoint: str,
) -> None:
    dsn = await asyncio.to_thread(fresh_database, f"other_{uuid.uuid4().hex[:8]}")
    other = await sign_in(await make_client(database_url=dsn), admin, moto_endpoint)
    stranger = Api(api.client, other.headers["Authorization"].split()[1])
    status, _ = await stranger.call("GET", "/v1/auth/whoami")
    assert status == 401


async def test_revocation_reaches_other_replicas(
    api: Api, make_client: ClientFactory, reader: Identity, moto_endpoint: str
) -> None:
    await _tree(api)
    binding = await api.grant(reader.arn, "prod/pay", "read")
    other = await sign_in(await make_client(), reader, moto_endpoint)
    assert (await other.call("GET", "/v1/effective/prod/pay"))[0] == 200
    await api.ok("DELETE", f"/v1/bindings/{binding['id']}")
    results: list[int] = []

    async def refused() -> None:
        results.append((await other.call("GET", "/v1/effective/prod/pay"))[0])

    async with asyncio.timeout(10):  # NOTIFY-driven: milliseconds, not the 60 s ceiling
        while not results or results[-1] != 403:
            await refused()


async def test_whoami_lists_bindings(api: Api, reader_api: Api, reader: Identity) -> None:
    await api.grant(reader.arn, "prod/pay", "view")
    doc = await reader_api.ok("GET", "/v1/auth/whoami")
    assert doc["admin"] is False
    assert [(b["path"], b["permission"]) for b in doc["bindings"]] == [("prod/pay", "view")]
    assert doc["bindings"][0]["grants"] == ["read", "view"]


async def test_body_limits_and_unknown_fields(api: Api) -> None:
    await _tree(api)
    big = json.dumps({"kind": "json", "value": {"x": "y" * (1024 * 1024)}}).encode()
    status, problem = await api.call(
        "PUT",
        "/v1/secrets/prod/pay/db",
        data=io.BytesIO(big),
        headers={"Content-Type": "application/json"},
    )
    assert status == 413, problem
    status, problem = await api.call(
        "PUT", "/v1/secrets/prod/pay/db", json={"kind": "json", "value": {"a": "b"}, "vale": 1}
    )
    assert status == 400
    assert "unknown field" in problem["detail"]
    status, problem = await api.call(
        "POST",
        "/v1/watch",
        json={"path": "prod/pay", "path_version": 0, "instance_id": "i", "extra": True},
    )
    assert status == 400


async def test_a_binding_one_cannot_see_is_not_there(
    api: Api, reader_api: Api, reader: Identity, db: asyncpg.Connection
) -> None:
    await _tree(api)
    hidden = await api.grant(f"arn:aws:iam::{ACCOUNT}:role/shop-hosts", "prod/shop", "read")
    await api.grant(reader.arn, "prod/pay", "view")
    missing_status, missing = await reader_api.call("DELETE", "/v1/bindings/987654321")
    status, problem = await reader_api.call("DELETE", f"/v1/bindings/{hidden['id']}")
    assert (status, missing_status) == (404, 404)
    assert problem["detail"] == missing["detail"].replace("987654321", str(hidden["id"]))
    row = await _denied_row(db)
    assert (row["action"], row["outcome"], row["status"]) == ("binding.revoke", "denied", 404)
    assert row["target"] == f"prod/shop binding {hidden['id']}"
    # Seeing the prefix without administering it: refused as such, and nothing revoked.
    pay = await api.grant(f"arn:aws:iam::{ACCOUNT}:role/pay-hosts", "prod/pay", "read")
    assert (await reader_api.call("DELETE", f"/v1/bindings/{pay['id']}"))[0] == 403
    ids = {b["id"] for b in (await api.ok("GET", "/v1/bindings"))["bindings"]}
    assert {hidden["id"], pay["id"]} <= ids
