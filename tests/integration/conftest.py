"""An app per test over real HTTP (aiohttp_client), on the shared migrated database."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from botocore.credentials import Credentials
from multidict import CIMultiDict

from kmsd.app import create_app
from kmsd.aws.login import sign_login
from kmsd.config import Settings
from tests.conftest import REGION, SERVER_ID, Identity


class FakeClock:
    """A clock the test moves by hand (no waiting for timeouts)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._base_mono = time.monotonic()
        self._base_wall = datetime.now(UTC)

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def monotonic(self) -> float:
        return self._base_mono + self.offset

    def now(self) -> datetime:
        return self._base_wall + timedelta(seconds=self.offset)


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    """Wait for ``check()`` to hold, polling the event loop, failing after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - the conditions are plain attributes, not events
            await asyncio.sleep(0.005)


TABLES = (
    "sessions",
    "sm_outbox",
    "secret_versions",
    "secrets",
    "nodes",
    "changes",
    "adoption",
    "bindings",
    "rotations",
    "rotation_events",
    "webhooks",
    "webhook_deliveries",
    "console_codes",
)


@pytest.fixture
def settings(
    database_url: str, moto_endpoint: str, admin: Identity, webhook_mac_key: str
) -> Settings:
    return Settings(
        database_url=database_url,
        server_id=SERVER_ID,
        sts_endpoint=moto_endpoint,
        aws_region=REGION,
        aws_endpoint_url=moto_endpoint,
        admins=(admin.arn,),
        log_format="console",
        db_pool_max=4,
        # moto lives for the whole session: a prefix per test keeps SM names apart.
        sm_prefix=f"kmsd-{uuid.uuid4().hex[:8]}/",
        webhook_mac_key=webhook_mac_key,
    )


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test database, emptied before the test."""
    conn = await asyncpg.connect(database_url)
    await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    try:
        yield conn
    finally:
        await conn.close()


ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def make_client(
    aiohttp_client: Any, settings: Settings, db: asyncpg.Connection
) -> ClientFactory:
    """Start a kmsd app (optionally with changed settings) and return its test client."""

    async def make(
        clock: FakeClock | None = None, **changes: Any
    ) -> TestClient[web.Request, web.Application]:
        app = create_app(dataclasses.replace(settings, **changes), reconcile=False, clock=clock)
        client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
        return client

    return make


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[web.Request, web.Application]:
    return await make_client()


def login_body(identity: Identity, sts_endpoint: str, server_id: str = SERVER_ID) -> dict[str, str]:
    creds = Credentials(identity.access_key, identity.secret_key, identity.session_token)
    return sign_login(creds, region=REGION, sts_endpoint=sts_endpoint, server_id=server_id)


class Api:
    """A signed-in caller: thin helpers that return (status, json)."""

    def __init__(self, client: TestClient[web.Request, web.Application], token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        headers = CIMultiDict(self.headers)
        headers.extend(kw.pop("headers", {}))  # keeps repeated header lines apart
        async with self.client.request(method, path, headers=headers, **kw) as resp:
            body = await resp.json(content_type=None) if resp.content_length != 0 else None
            return resp.status, body

    async def ok(self, method: str, path: str, **kw: Any) -> Any:
        status, body = await self.call(method, path, **kw)
        assert status < 300, (status, body)
        return body

    async def put_json(self, ref: str, value: dict[str, Any], **extra: Any) -> Any:
        return await self.ok(
            "PUT", f"/v1/secrets/{ref}", json={"kind": "json", "value": value, **extra}
        )

    async def effective(self, path: str) -> Any:
        return await self.ok("GET", f"/v1/effective/{path}")

    async def grant(self, who: str, path: str, permission: str, **extra: Any) -> Any:
        body = {"principal": who, "path": path, "permission": permission, **extra}
        return await self.ok("POST", "/v1/bindings", json=body)


async def sign_in(
    client: TestClient[web.Request, web.Application], identity: Identity, sts_endpoint: str
) -> Api:
    async with client.post("/v1/auth/aws/login", json=login_body(identity, sts_endpoint)) as resp:
        doc = await resp.json()
        assert resp.status == 200, doc
    return Api(client, doc["token"])


@pytest.fixture
async def api(
    client: TestClient[web.Request, web.Application], admin: Identity, moto_endpoint: str
) -> Api:
    return await sign_in(client, admin, moto_endpoint)


@pytest.fixture
async def reader_api(
    client: TestClient[web.Request, web.Application], reader: Identity, moto_endpoint: str
) -> Api:
    return await sign_in(client, reader, moto_endpoint)


async def snapshot(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every kmsd table except sessions: to prove a refused call changed nothing."""
    out = {}
    for table in TABLES:
        if table == "sessions":
            continue
        rows = await conn.fetch(f"SELECT * FROM {table} ORDER BY 1")  # noqa: S608 - fixed names
        out[table] = [tuple(r) for r in rows]
    return out


def intent_doc(path: str, name: str, sm_name: str, *, stage: str = "current") -> dict[str, Any]:
    """An outbox intent as a put of a JSON secret commits it (before SM is asked)."""
    return {
        "path": path,
        "name": name,
        "kind": "json",
        "sm_name": sm_name,
        "created_by": "test",
        "description": "",
        "tags": {},
        "expires_at": None,
        "spec": None,
        "public_key": None,
        "stage": stage,
        "rotation": None,
    }
