"""Migrations: each file once, in its own transaction, even with two starters at once."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from kmsd.db.migrate import MIGRATION_LOCK_KEY, load_migrations, migrate
from kmsd.errors import ConfigError


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


async def test_two_starters_apply_each_migration_once(fresh_database: Any) -> None:
    dsn = await asyncio.to_thread(fresh_database, f"mig_{uuid.uuid4().hex[:8]}")
    holder, a, b = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        # Hold the lock so both starters queue on it and then race for the same files.
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        first = asyncio.create_task(migrate(a))
        second = asyncio.create_task(migrate(b))
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        async with asyncio.timeout(10):
            while await holder.fetchval(waiting) < 2:  # noqa: ASYNC110 - polling PostgreSQL
                await asyncio.sleep(0.01)
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        applied = await asyncio.gather(first, second)
        names = [m.name for m in load_migrations()]
        assert sorted(applied[0] + applied[1]) == sorted(names)
        assert [] in applied  # the second starter found everything done
        rows = await holder.fetch("SELECT name FROM kmsd_migrations ORDER BY version")
        assert [r["name"] for r in rows] == names
    finally:
        for conn in (holder, a, b):
            await conn.close()


async def test_failed_migration_rolls_back_and_is_not_recorded(
    fresh_database: Any, tmp_path: Path
) -> None:
    dsn = await asyncio.to_thread(fresh_database, f"mig_{uuid.uuid4().hex[:8]}")
    directory = _write(
        tmp_path / "sql",
        {
            "0001_ok.sql": "CREATE TABLE t1 (id int);",
            "0002_broken.sql": "CREATE TABLE t2 (id int); SELECT no_such_function();",
        },
    )
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await migrate(conn, directory)
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM kmsd_migrations")]
        assert versions == [1]
        assert await conn.fetchval("SELECT to_regclass('t2')") is None
        # The lock was released: a fixed file applies.
        (directory / "0002_broken.sql").write_text("CREATE TABLE t2 (id int);")
        # ... but editing an applied file is refused ...
        (directory / "0001_ok.sql").write_text("CREATE TABLE t1 (id bigint);")
        with pytest.raises(ConfigError):
            await migrate(conn, directory)
        (directory / "0001_ok.sql").write_text("CREATE TABLE t1 (id int);")
        assert await migrate(conn, directory) == ["0002_broken"]  # ... restoring it works
    finally:
        await conn.close()


def test_misnamed_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_migrations(_write(tmp_path, {"1_init.sql": "SELECT 1;"}))
