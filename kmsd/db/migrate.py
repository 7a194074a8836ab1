"""Forward-only migrations from ``sql/NNNN_description.sql``.

Each file runs in its own transaction and is recorded (with a checksum) in
``kmsd_migrations``. A session advisory lock serialises concurrent starters: the second kmsd
waits, then finds every file applied. A file whose checksum differs from the one recorded is a
deployment error and stops the start-up.

Who migrates: the owner of kmsd's tables. ``kmsd serve`` connected as that owner migrates at
start-up as before; connected as a least-privileged role (``kmsd migrate --grant-to ROLE``,
``kmsd.db.grants``) it only reads ``kmsd_migrations``, starts when nothing is pending, and
otherwise stops with one line that says to run ``kmsd migrate`` as the owner.
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
_FILE_RE = re.compile(r"^([0-9]{4})_[a-z0-9_]+\.sql$")

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


class MigrationsPending(ConfigError):
    """Migrations are pending and this connection's role may not apply them."""


_APPLIED = "SELECT version, name, checksum FROM kmsd_migrations"
_EXISTS = "SELECT to_regclass('kmsd_migrations') IS NOT NULL"
# May this role migrate: a superuser, or the tables' owner (or one of its members); on an empty
# database, whoever may create tables in the schema.
_MAY_MIGRATE = """
SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
    OR CASE WHEN to_regclass('kmsd_migrations') IS NULL
            THEN has_schema_privilege(current_schema(), 'CREATE')
            ELSE pg_has_role((SELECT relowner FROM pg_class
                              WHERE oid = to_regclass('kmsd_migrations')), 'USAGE')
       END
"""


def _check_applied(migrations: list[Migration], rows: list[asyncpg.Record]) -> set[int]:
    """The versions applied, after refusing any applied file that was changed since."""
    done = {r["version"]: r for r in rows}
    for m in migrations:
        if m.version in done and done[m.version]["checksum"] != m.checksum:
            raise ConfigError(
                f"migration {m.name} was changed after it was applied; "
                "migrations are forward-only, add a new file instead"
            )
    return set(done)


async def pending(conn: asyncpg.Connection, directory: Path | None = None) -> list[Migration]:
    """The migrations not applied yet: read-only, so any role that may read the table can ask."""
    migrations = load_migrations(directory)
    if not await conn.fetchval(_EXISTS):
        return migrations
    done = _check_applied(migrations, await conn.fetch(_APPLIED))
    return [m for m in migrations if m.version not in done]


async def migrate_at_start(conn: asyncpg.Connection, directory: Path | None = None) -> list[str]:
    """``kmsd serve``'s start-up: migrate as the owner; as another role, check only."""
    todo = await pending(conn, directory)
    if not todo:
        return []
    if await conn.fetchval(_MAY_MIGRATE):
        try:
            return await migrate(conn, directory)
        except asyncpg.InsufficientPrivilegeError:
            pass  # e.g. a role with CREATE on the schema that owns none of kmsd's tables
    user = await conn.fetchval("SELECT current_user")
    raise MigrationsPending(
        f"{len(todo)} database migration(s) pending ({', '.join(m.name for m in todo)}) and "
        f"kmsd connects as {user!r}, which may not apply them: run `kmsd migrate --grant-to "
        f"{user}` as the owner of kmsd's tables, then start kmsd again"
    )


async def migrate(conn: asyncpg.Connection, directory: Path | None = None) -> list[str]:
    """Apply pending migrations; return the names applied by this call."""
    migrations = load_migrations(directory)
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        done = _check_applied(migrations, await conn.fetch(_APPLIED))
        for m in migrations:
            if m.version in done:
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
