"""Least privilege for the role kmsd serves as: what ``kmsd migrate --grant-to ROLE`` applies.

The owner of kmsd's tables runs the migrations; kmsd itself should connect as another role
that can do what kmsd does at runtime and nothing more. Above all it must not own the tables:
an owner (or a superuser) can ``ALTER TABLE audit_log DISABLE TRIGGER``, ``TRUNCATE`` or
``DROP`` and so rewrite the append-only trail.

``grant_to`` gives that role exactly ``PRIVILEGES`` (read and write its rows; only append to
the audit trail and move its head; read which migrations ran) on every table of kmsd's schema
that the migrations' owner owns, ``USAGE`` on its sequences and ``EXECUTE`` on its functions,
after revoking whatever the role held on them before: running it again (after every upgrade,
when new tables appear) converges on the same grants. Advisory locks, LISTEN/NOTIFY and
``pg_locks`` need no grant. The role itself (LOGIN, its password) is the operator's to create.
"""

from __future__ import annotations

import asyncpg
import orjson

from kmsd.errors import ConfigError

# What the role may do per table; every other table of the owner's gets the default.
PRIVILEGES: dict[str, str] = {
    "audit_log": "SELECT, INSERT",  # append-only: never UPDATE, DELETE or TRUNCATE
    "audit_head": "SELECT, UPDATE",  # the chain's one-row head, locked and moved by writers
    "kmsd_migrations": "SELECT",  # so that a replica can tell nothing is pending
}
DEFAULT_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"

# Who owns kmsd's schema: the owner of kmsd_migrations (the migrations created it).
_OWNER = """
SELECT c.relowner::regrole::text AS owner, n.nspname AS schema
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass('kmsd_migrations')
"""
_ROLE = "SELECT rolsuper FROM pg_roles WHERE rolname = $1"
_MEMBER_OF_OWNER = "SELECT pg_has_role($1, $2, 'MEMBER')"
# The grants, by PostgreSQL itself: identifiers quoted by format('%I'), the role and the table
# privileges passed as transaction-local settings (a DO block takes no parameters).
_SETTINGS = """
SELECT set_config('kmsd.grant_to', $1, true), set_config('kmsd.grant_owner', $2, true),
       set_config('kmsd.grant_tables', $3, true), set_config('kmsd.grant_default', $4, true)
"""
_GRANT = """
DO $grants$
DECLARE
    grantee  text := current_setting('kmsd.grant_to');
    owner    regrole := current_setting('kmsd.grant_owner')::regrole;
    special  jsonb := current_setting('kmsd.grant_tables')::jsonb;
    fallback text := current_setting('kmsd.grant_default');
    home     regnamespace := (SELECT relnamespace FROM pg_class
                              WHERE oid = to_regclass('kmsd_migrations'));
    obj      record;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %s TO %I', home, grantee);
    FOR obj IN SELECT oid::regclass AS name, relname, relkind FROM pg_class
               WHERE relnamespace = home AND relowner = owner AND relkind IN ('r', 'p', 'S')
    LOOP
        IF obj.relkind = 'S' THEN
            EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM %I', obj.name, grantee);
            EXECUTE format('GRANT USAGE ON SEQUENCE %s TO %I', obj.name, grantee);
        ELSE
            EXECUTE format('REVOKE ALL ON TABLE %s FROM %I', obj.name, grantee);
            EXECUTE format('GRANT %s ON TABLE %s TO %I',
                           coalesce(special ->> obj.relname::text, fallback), obj.name, grantee);
        END IF;
    END LOOP;
    FOR obj IN SELECT oid::regprocedure AS name FROM pg_proc
               WHERE pronamespace = home AND proowner = owner AND prokind = 'f'
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', obj.name, grantee);
    END LOOP;
END
$grants$
"""


async def grant_to(conn: asyncpg.Connection, role: str) -> None:
    """Give ``role`` kmsd's runtime privileges and no others (run as the owner, idempotent)."""
    found = await conn.fetchrow(_OWNER)
    if found is None:
        raise ConfigError("kmsd's tables do not exist here yet: run the migrations first")
    owner = found["owner"]
    superuser = await conn.fetchval(_ROLE, role)
    if superuser is None:
        raise ConfigError(
            f"role {role!r} does not exist: create it first "
            f"(CREATE ROLE {role} LOGIN PASSWORD '...'), then grant again"
        )
    if superuser:
        raise ConfigError(f"role {role!r} is a superuser: no grant can restrict it")
    if await conn.fetchval(_MEMBER_OF_OWNER, role, owner):
        raise ConfigError(
            f"role {role!r} is (or is a member of) {owner!r}, which owns kmsd's tables: kmsd "
            "must serve as a role that cannot alter, truncate or drop them"
        )
    tables = orjson.dumps(PRIVILEGES).decode()
    async with conn.transaction():
        await conn.execute(_SETTINGS, role, owner, tables, DEFAULT_PRIVILEGES)
        await conn.execute(_GRANT)
