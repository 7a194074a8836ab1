"""``kmsd migrate --grant-to ROLE``'s grants: the role kmsd serves as can do kmsd's work and
cannot rewrite the audit trail, alter or drop kmsd's tables; and ``kmsd serve``'s start-up
check as that role (nothing pending: start; something pending: one clear refusal).

Real PostgreSQL: a fresh database per test, migrated by the superuser (the tables' owner),
and a fresh LOGIN role per test (roles are cluster-wide, so each is dropped afterwards).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from kmsd.db.grants import DEFAULT_PRIVILEGES, PRIVILEGES, grant_to
from kmsd.db.migrate import MigrationsPending, load_migrations, migrate, migrate_at_start, sql_dir
from kmsd.errors import ConfigError


def as_role(dsn: str, role: str) -> str:
    """``dsn`` with another user (the embedded server trusts local connections)."""
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    netloc = f"{role}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Setup:
    def __init__(self, owner: asyncpg.Connection, dsn: str, role: str) -> None:
        self.owner, self.dsn, self.role = owner, dsn, role

    async def connect_as_role(self) -> asyncpg.Connection:
        return await asyncpg.connect(as_role(self.dsn, self.role))


@pytest.fixture
async def setup(fresh_database: Any) -> AsyncIterator[Setup]:
    dsn = await asyncio.to_thread(fresh_database, f"grants_{uuid.uuid4().hex[:8]}")
    role = f"kmsd_app_{uuid.uuid4().hex[:8]}"
    owner = await asyncpg.connect(dsn)
    await migrate(owner)
    await owner.execute(f"CREATE ROLE {role} LOGIN")
    try:
        yield Setup(owner, dsn, role)
    finally:
        await owner.execute(f"DROP OWNED BY {role}")
        await owner.close()
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f"DROP ROLE {role}")
        finally:
            await admin.close()


REFUSED = [
    ("UPDATE audit_log SET target = 'rewritten'", "permission denied for table audit_log"),
    ("DELETE FROM audit_log", "permission denied for table audit_log"),
    ("ALTER TABLE audit_log DISABLE TRIGGER ALL", "must be owner of table audit_log"),
    ("TRUNCATE audit_log", "permission denied for table audit_log"),
    ("DROP TABLE secrets", "must be owner of table secrets"),
    ("DROP TABLE audit_log", "must be owner of table audit_log"),
    ("DELETE FROM audit_head", "permission denied for table audit_head"),
    ("UPDATE kmsd_migrations SET checksum = ''", "permission denied for table kmsd_migrations"),
    ("CREATE TABLE sneaky (id int)", "permission denied for schema public"),
    ("ALTER TABLE secrets ADD COLUMN x int", "must be owner of table secrets"),
]


@pytest.mark.parametrize(("statement", "refusal"), REFUSED)
async def test_the_role_cannot_rewrite_the_trail_or_alter_kmsd_tables(
    setup: Setup, statement: str, refusal: str
) -> None:
    await grant_to(setup.owner, setup.role)
    conn = await setup.connect_as_role()
    try:
        # The privilege check itself refuses (not the append-only trigger, whose SQLSTATE is
        # the same): the message tells them apart.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=refusal):
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_the_role_does_kmsd_work(setup: Setup) -> None:
    await grant_to(setup.owner, setup.role)
    conn = await setup.connect_as_role()
    try:
        assert (
            await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            is False
        )
        async with conn.transaction():  # what the audit writer does
            head = await conn.fetchrow("SELECT seq, hash FROM audit_head FOR UPDATE")
            await conn.execute(
                "INSERT INTO audit_log (seq, at, request_id, replica, principal, claimed,"
                " source_ip, action, target, outcome, status, prev_hash, hash)"
                " VALUES ($1, now(), 'r', 'x', '-', '', '', 'test', '', 'allowed', 200, $2, $2)",
                head["seq"] + 1,
                head["hash"],
            )
            await conn.execute("UPDATE audit_head SET seq = seq + 1")
        node = await conn.fetchval(
            "INSERT INTO nodes (path, name, depth, created_by) VALUES ('prod', 'prod', 1, 't')"
            " RETURNING id"
        )
        await conn.execute("UPDATE nodes SET created_by = 'u' WHERE id = $1", node)
        await conn.execute("SELECT nextval('write_seq')")
        await conn.execute("SELECT pg_advisory_lock(1), pg_advisory_unlock(1)")
        async with conn.transaction():  # a leader-only change's fence
            await conn.execute("SELECT kmsd_check_fence(0)")
        await conn.execute("DELETE FROM nodes WHERE id = $1", node)
        assert await migrate_at_start(conn) == []  # nothing pending: a read-only check
    finally:
        await conn.close()


async def test_the_grants_are_exactly_the_documented_ones_and_converge(setup: Setup) -> None:
    await setup.owner.execute(f"GRANT TRUNCATE, TRIGGER ON nodes, audit_log TO {setup.role}")
    await grant_to(setup.owner, setup.role)
    first = await _grants(setup)
    await grant_to(setup.owner, setup.role)  # again: nothing changes
    assert await _grants(setup) == first
    tables = {
        r["t"]
        for r in await setup.owner.fetch(
            "SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public'"
        )
    }
    expected = {
        (t, p.strip()) for t in tables for p in PRIVILEGES.get(t, DEFAULT_PRIVILEGES).split(",")
    }
    assert first == expected  # the stray TRUNCATE and TRIGGER are gone
    assert ("audit_log", "UPDATE") not in first
    assert not {p for _, p in first} & {"TRUNCATE", "TRIGGER", "REFERENCES"}


async def _grants(setup: Setup) -> set[tuple[str, str]]:
    rows = await setup.owner.fetch(
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants"
        " WHERE grantee = $1",
        setup.role,
    )
    return {(r["table_name"], r["privilege_type"]) for r in rows}


async def test_no_grants_to_a_role_that_could_not_be_restricted(setup: Setup) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        await grant_to(setup.owner, "no_such_role_here")
    with pytest.raises(ConfigError, match="superuser"):
        await grant_to(setup.owner, "postgres")
    member = f"{setup.role}_m"
    await setup.owner.execute(f"CREATE ROLE {member} LOGIN IN ROLE postgres")
    try:
        with pytest.raises(ConfigError, match="owns kmsd's tables"):
            await grant_to(setup.owner, member)
    finally:
        await setup.owner.execute(f"DROP ROLE {member}")


async def test_serving_as_the_role_with_a_migration_pending_is_one_clear_refusal(
    setup: Setup, tmp_path: Path
) -> None:
    await grant_to(setup.owner, setup.role)
    later = tmp_path / "sql"
    later.mkdir()
    for m in load_migrations(sql_dir()):
        (later / f"{m.name}.sql").write_text(m.sql)
    (later / "9999_later.sql").write_text("CREATE TABLE later (id int);")
    conn = await setup.connect_as_role()
    try:
        with pytest.raises(MigrationsPending) as refused:
            await migrate_at_start(conn, later)
        message = str(refused.value)
        assert "\n" not in message
        assert "9999_later" in message
        assert f"kmsd migrate --grant-to {setup.role}" in message
        assert await conn.fetchval("SELECT to_regclass('later')") is None
    finally:
        await conn.close()
    # The owner still migrates at start-up, as before.
    assert await migrate_at_start(setup.owner, later) == ["9999_later"]
