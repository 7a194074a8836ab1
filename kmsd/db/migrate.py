"""Forward-only migrations from ``sql/NNNN_description.sql``.

Each file runs in its own transaction and is recorded (with a checksum) in
``kmsd_migrations``. A session advisory lock serialises concurrent starters: the second kmsd
waits, then finds every file applied. A file whose checksum differs from the one recorded is a
deployment error and stops the start-up.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg
import structlog

from kmsd.errors import ConfigError

log = structlog.get_logger(__name__)

# Arbitrary, fixed: "kmsd" in ASCII. Every replica must use the same key.
MIGRATION_LOCK_KEY = 0x6B6D7364
_FILE_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS kmsd_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def sql_dir() -> Path:
    """Locate the migrations: inside the wheel (kmsd/sql) or the source tree (sql/)."""
    packaged = Path(str(resources.files("kmsd"))) / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Read and order the migration files."""
    directory = directory or sql_dir()
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if match is None:
            raise ConfigError(f"migration file {path.name!r} is not named NNNN_description.sql")
        found.append(Migration(int(match[1]), path.stem, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ConfigError("two migration files share a number")
    return found


async def migrate(conn: asyncpg.Connection, directory: Path | None = None) -> list[str]:
    """Apply pending migrations; return the names applied by this call."""
    migrations = load_migrations(directory)
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        rows = await conn.fetch("SELECT version, name, checksum FROM kmsd_migrations")
        done = {r["version"]: r for r in rows}
        for m in migrations:
            if m.version in done:
                if done[m.version]["checksum"] != m.checksum:
                    raise ConfigError(
                        f"migration {m.name} was changed after it was applied; "
                        "migrations are forward-only, add a new file instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO kmsd_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    m.checksum,
                )
            log.info("migration_applied", migration=m.name)
            applied_now.append(m.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now
