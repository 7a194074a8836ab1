"""Webhook signing keys are derived with KMS GenerateMac and never stored: a database dump holds
nothing that signs, while deliveries still verify with the key shown when the hook was set.

Real PostgreSQL, moto's KMS (an HMAC_256 key named by an alias) and a receiver on loopback;
deliveries are driven with ``deliver_due`` as the leader drives them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import shutil
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kmsd.aws.clients import aws_client
from kmsd.config import Settings
from kmsd.db.migrate import migrate, sql_dir
from kmsd.domain.access import parse_cidrs
from kmsd.keys import HTTP, POOL, WEBHOOK_KEYS
from kmsd.services import webhooks
from kmsd.services.webhook_keys import SALT_BYTES, WebhookKeys, key_text, mac_message
from tests.conftest import REGION, Identity
from tests.integration.conftest import Api, ClientFactory, sign_in
from tests.integration.test_rotation import OWNER, setup_shared, start

LOOPBACK = parse_cidrs(["127.0.0.0/8"])
Got = list[tuple[dict[str, str], bytes]]


@pytest.fixture
async def receiver(aiohttp_server: Any) -> tuple[TestServer, Got]:
    got: Got = []

    async def hook(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    return await aiohttp_server(app, host="127.0.0.1"), got


async def _api(make_client: ClientFactory, admin: Identity, moto_endpoint: str, **kw: Any) -> Api:
    api = await sign_in(
        await make_client(webhook_allowed_cidrs=LOOPBACK, **kw), admin, moto_endpoint
    )
    await setup_shared(api)
    return api


async def _deliver(api: Api) -> int:
    app = api.client.app
    return await webhooks.deliver_due(app[POOL], app[HTTP], LOOPBACK, None, keys=app[WEBHOOK_KEYS])


def _verifies(key: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does (docs/rotation.md): HMAC-SHA256 keyed with the key's text."""
    mac = hmac.new(key.encode(), headers["X-Kmsd-Timestamp"].encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(headers["X-Kmsd-Signature"], "sha256=" + mac.hexdigest())


def _forms(key: str) -> list[str]:
    """The key as shown, and its raw bytes in hex and base64 (standard and URL-safe)."""
    raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    assert len(raw) == 32
    return [
        key,
        raw.hex(),
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(key.encode()).decode().rstrip("="),
        key.encode().hex(),
    ]


async def _dump(db: asyncpg.Connection) -> str:
    """Every row of every table in the database, as text: what a dump would hold."""
    tables = await db.fetch(
        "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) AS t"
        " FROM information_schema.tables"
        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        " AND table_type = 'BASE TABLE'"
    )
    assert len(tables) > 10
    out = []
    for row in tables:
        name = row["t"]
        # Fixed names from the catalogue, quoted by PostgreSQL.
        out += [r[0] for r in await db.fetch(f"SELECT t::text FROM {name} t")]  # noqa: S608
        # bytea columns also as base64 and raw text, in case a key hid in one.
        cols = await db.fetch(
            "SELECT quote_ident(attname) AS c FROM pg_attribute"
            " WHERE attrelid = $1::regclass AND atttypid = 'bytea'::regtype AND attnum > 0",
            name,
        )
        for col in cols:
            query = f"SELECT encode({col['c']}, 'base64'), encode({col['c']}, 'escape') FROM {name}"  # noqa: S608
            out += [v for r in await db.fetch(query) for v in r if v]
    return "\n".join(out)


async def test_a_set_webhook_stores_no_key_and_nothing_that_signs_like_it(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str, db: asyncpg.Connection
) -> None:
    api = await _api(make_client, admin, moto_endpoint)
    shown = await api.ok("PUT", f"/v1/webhooks/{OWNER}", json={"url": "http://127.0.0.1:9/h"})
    key = shown["hmac_key"]
    assert len(key) == 43  # 32 bytes, base64url: the shape receivers already handle
    row = await db.fetchrow("SELECT * FROM webhooks WHERE app_path = $1", OWNER)
    assert row["hmac_key"] is None
    assert len(row["mac_salt"]) == SALT_BYTES
    message = b"1700000000." + b'{"event": 1}'
    wanted = hmac.new(key.encode(), message, hashlib.sha256).digest()
    for column, value in dict(row).items():
        if value is None:
            continue
        candidates = [value] if isinstance(value, bytes) else []
        candidates.append(str(value).encode())
        for candidate in candidates:
            assert key.encode() not in candidate, column
            # Used as a key the way kmsd signs, no column signs like the shown key.
            assert hmac.new(candidate, message, hashlib.sha256).digest() != wanted, column


async def test_a_delivery_verifies_with_the_key_shown_when_the_hook_was_set(
    make_client: ClientFactory,
    admin: Identity,
    moto_endpoint: str,
    receiver: tuple[TestServer, Got],
    settings: Settings,
) -> None:
    server, got = receiver
    api = await _api(make_client, admin, moto_endpoint)
    url = str(server.make_url("/hook"))
    key = (await api.ok("PUT", f"/v1/webhooks/{OWNER}", json={"url": url}))["hmac_key"]
    rot = await start(api)
    keys = api.client.app[WEBHOOK_KEYS]
    calls = keys.kms_calls
    assert await _deliver(api) == 1
    assert keys.kms_calls == calls + 1  # derived once for the first delivery ...
    await api.ok("POST", f"/v1/rotations/{rot['id']}/abort")
    assert await _deliver(api) == 1
    assert keys.kms_calls == calls + 1  # ... then from the leader's cache
    assert [orjson.loads(body)["action"] for _, body in got] == ["start", "abort"]
    assert all(_verifies(key, headers, body) for headers, body in got)

    # Another replica (an empty cache: a new leader) derives the same key from the row alone.
    other = await sign_in(await make_client(webhook_allowed_cidrs=LOOPBACK), admin, moto_endpoint)
    await start(other)
    assert await _deliver(other) == 1
    assert other.client.app[WEBHOOK_KEYS].kms_calls == 1
    assert _verifies(key, *got[-1])
    # Setting the hook again makes a new key; the old one no longer verifies.
    new_key = (await api.ok("PUT", f"/v1/webhooks/{OWNER}", json={"url": url}))["hmac_key"]
    assert new_key != key
    rows = await api.ok("GET", f"/v1/rotations?path={OWNER}&active=true")
    await api.ok("POST", f"/v1/rotations/{rows['rotations'][0]['id']}/abort")
    assert await _deliver(api) == 1
    assert _verifies(new_key, *got[-1])
    assert not _verifies(key, *got[-1])


async def test_a_dump_of_every_table_holds_neither_the_key_nor_its_encodings(
    make_client: ClientFactory,
    admin: Identity,
    moto_endpoint: str,
    receiver: tuple[TestServer, Got],
    db: asyncpg.Connection,
) -> None:
    server, got = receiver
    api = await _api(make_client, admin, moto_endpoint)
    url = str(server.make_url("/hook"))
    key = (await api.ok("PUT", f"/v1/webhooks/{OWNER}", json={"url": url}))["hmac_key"]
    await start(api)
    assert await _deliver(api) == 1  # deliveries, audit rows and all are in the dump
    assert _verifies(key, *got[0])
    dump = (await _dump(db)).lower()
    assert OWNER in dump  # the dump does hold the hook's rows
    for form in _forms(key):
        assert form.lower() not in dump, form


async def test_without_a_mac_key_setting_a_webhook_is_a_409_naming_the_setting(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str, db: asyncpg.Connection
) -> None:
    api = await _api(make_client, admin, moto_endpoint, webhook_mac_key=None)
    async with api.client.put(
        f"/v1/webhooks/{OWNER}", json={"url": "http://127.0.0.1:9/h"}, headers=api.headers
    ) as resp:
        assert resp.status == 409
        assert resp.content_type == "application/problem+json"
        assert "Retry-After" not in resp.headers  # not transient: a retry cannot help
        problem = await resp.json(content_type=None)
    assert problem["type"].endswith("/webhooks-not-configured")
    assert problem["setting"] == "KMSD_WEBHOOK_MAC_KEY"
    assert "KMSD_WEBHOOK_MAC_KEY" in problem["detail"]
    assert "HMAC_256" in problem["detail"]
    assert await db.fetchval("SELECT count(*) FROM webhooks") == 0


@pytest.fixture(scope="module")
def symmetric_key(moto_endpoint: str) -> str:
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name=REGION)
    return str(kms.create_key()["KeyMetadata"]["KeyId"])


@pytest.mark.parametrize(
    ("mac_key", "aws_error"),
    [("alias/no-such-key", "NotFoundException"), ("symmetric", "InvalidKeyUsageException")],
)
async def test_a_kms_refusal_at_set_time_is_a_502_and_changes_nothing(
    make_client: ClientFactory,
    admin: Identity,
    moto_endpoint: str,
    db: asyncpg.Connection,
    symmetric_key: str,
    mac_key: str,
    aws_error: str,
) -> None:
    good = await _api(make_client, admin, moto_endpoint)
    await good.ok("PUT", f"/v1/webhooks/{OWNER}", json={"url": "http://127.0.0.1:9/old"})
    before = await db.fetchrow("SELECT * FROM webhooks")
    mac_key = symmetric_key if mac_key == "symmetric" else mac_key
    api = await sign_in(
        await make_client(webhook_allowed_cidrs=LOOPBACK, webhook_mac_key=mac_key),
        admin,
        moto_endpoint,
    )
    status, problem = await api.call(
        "PUT", f"/v1/webhooks/{OWNER}", json={"url": "http://127.0.0.1:9/new"}
    )
    assert status == 502, problem
    assert problem["type"].endswith("/upstream-error")
    assert problem["aws_error"] == aws_error
    assert "GenerateMac" in problem["detail"]
    assert await db.fetchrow("SELECT * FROM webhooks") == before  # the old hook stands


async def test_a_kms_failure_at_delivery_is_a_failed_delivery_retried_later(
    make_client: ClientFactory,
    admin: Identity,
    moto_endpoint: str,
    receiver: tuple[TestServer, Got],
    db: asyncpg.Connection,
) -> None:
    server, got = receiver
    api = await _api(make_client, admin, moto_endpoint)
    url = str(server.make_url("/hook"))
    key = (await api.ok("PUT", f"/v1/webhooks/{OWNER}", json={"url": url}))["hmac_key"]
    key_id = await db.fetchval("SELECT mac_key_id FROM webhooks")
    # The KMS key the row names is gone (deleted, or kmsd lost kms:GenerateMac on it).
    await db.execute("UPDATE webhooks SET mac_key_id = 'alias/gone'")
    await start(api)
    assert await _deliver(api) == 0
    assert got == []  # nothing unsigned, nothing signed with another key
    failed = await db.fetchrow(
        "SELECT attempts, last_error, next_at > now() AS later, delivered_at"
        " FROM webhook_deliveries"
    )
    assert failed["attempts"] == 1
    assert failed["later"]
    assert failed["delivered_at"] is None
    assert failed["last_error"].startswith("signing key: KMS refused GenerateMac")
    assert "NotFoundException" in failed["last_error"]
    # KMS answers again: the retry is delivered, signed with the key shown at set time.
    await db.execute("UPDATE webhooks SET mac_key_id = $1", key_id)
    await db.execute("UPDATE webhook_deliveries SET next_at = now()")  # skip the backoff
    assert await _deliver(api) == 1
    assert _verifies(key, *got[0])


async def test_a_hook_from_before_derived_keys_signs_with_its_stored_key_until_set_again(
    make_client: ClientFactory,
    admin: Identity,
    moto_endpoint: str,
    receiver: tuple[TestServer, Got],
    db: asyncpg.Connection,
) -> None:
    server, got = receiver
    api = await _api(make_client, admin, moto_endpoint)
    url = str(server.make_url("/hook"))
    # A row as an older kmsd wrote it (and as the migration keeps it).
    await db.execute(
        "INSERT INTO webhooks (app_path, url, hmac_key, created_by) VALUES ($1, $2, $3, 'old')",
        OWNER,
        url,
        "legacy-key-shown-long-ago",
    )
    await start(api)
    assert await _deliver(api) == 1
    assert _verifies("legacy-key-shown-long-ago", *got[0])
    await api.ok("PUT", f"/v1/webhooks/{OWNER}", json={"url": url})
    row = await db.fetchrow("SELECT hmac_key, mac_salt FROM webhooks")
    assert row["hmac_key"] is None  # set again: the stored key is gone
    assert row["mac_salt"] is not None


async def test_the_migration_keeps_existing_hooks_and_their_keys(
    fresh_database: Any, tmp_path: Path
) -> None:
    dsn = await asyncio.to_thread(fresh_database, f"mig_{uuid.uuid4().hex[:8]}")
    before = tmp_path / "sql"
    before.mkdir()
    for path in sorted(sql_dir().glob("*.sql")):
        if path.name < "0013":
            shutil.copy(path, before / path.name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, before)
        await conn.execute(
            "INSERT INTO webhooks (app_path, url, hmac_key, created_by)"
            " VALUES ('prod/shop', 'https://example.com/h', 'k', 'old')"
        )
        assert "0013_webhook_keys" in await migrate(conn)
        row = await conn.fetchrow("SELECT hmac_key, mac_salt, mac_key_id FROM webhooks")
        assert tuple(row) == ("k", None, None)
        # A row holds one kind of key: a stored one, or what derives one - never both or none.
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE webhooks SET mac_salt = '\\x00', mac_key_id = 'k'")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE webhooks SET hmac_key = NULL")
    finally:
        await conn.close()


async def test_derived_keys_are_kms_macs_of_the_domain_separated_message_and_cached_bounded(
    settings: Settings, webhook_mac_key: str, moto_endpoint: str
) -> None:
    async with aws_client("kms", settings) as kms:  # kmsd's guarded client: GenerateMac passes
        keys = WebhookKeys(kms, webhook_mac_key, cache_size=2)
        new = await keys.create("prod/shop")
        assert new.key not in repr(new)
        mac = boto3.client("kms", endpoint_url=moto_endpoint, region_name=REGION).generate_mac(
            KeyId=webhook_mac_key,
            Message=mac_message("prod/shop", new.salt),
            MacAlgorithm="HMAC_SHA_256",
        )["Mac"]
        assert new.key == key_text(mac)
        # The path is part of the message: the same salt on another application's row derives
        # another key.
        assert await keys.derive(new.key_id, "prod/billing", new.salt) != new.key
        assert await keys.derive(new.key_id, "prod/shop", new.salt) == new.key
        calls = keys.kms_calls
        assert await keys.derive(new.key_id, "prod/shop", new.salt) == new.key
        assert keys.kms_calls == calls  # cached
        await keys.derive(new.key_id, "prod/a", b"1" * SALT_BYTES)
        await keys.derive(new.key_id, "prod/b", b"2" * SALT_BYTES)  # evicts prod/shop
        await keys.derive(new.key_id, "prod/shop", new.salt)
        assert keys.kms_calls == calls + 3
