"""kmsd in production's shape: ``kmsd migrate --grant-to ROLE`` run by the tables' owner, then
``kmsd serve`` connected as ROLE, a role that cannot rewrite its own audit trail.

Real processes on a fresh database: the migrate command, a serve replica (which leads the
scheduler and delivers a webhook under the leadership fence), kmsctl, and the test's own
connections as the owner and as ROLE.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.conftest import Identity
from tests.e2e.faults import Deliveries, Postgres, unique_app, wait_for
from tests.e2e.harness import BIN, DEADLINE_S, Ops, Replica

pytestmark = pytest.mark.e2e

APP = unique_app()


def as_role(dsn: str, role: str) -> str:
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    netloc = f"{role}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def kmsd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kmsd"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )


@pytest.fixture
def role(env: dict[str, str]) -> Iterator[str]:
    name = f"kmsd_app_{uuid.uuid4().hex[:8]}"
    owner = Postgres(env["KMSD_DATABASE_URL"])
    owner.fetch(f"CREATE ROLE {name} LOGIN")
    try:
        yield name
    finally:
        owner.fetch(f"DROP OWNED BY {name}")
        owner.fetch(f"DROP ROLE {name}")
        owner.close()


def test_kmsd_serves_as_a_granted_role_that_cannot_rewrite_its_trail(
    env: dict[str, str], role: str, tmp_path: Path, admin: Identity, moto_endpoint: str
) -> None:
    done = kmsd(env, "migrate", "--grant-to", role)
    assert done.returncode == 0, done.stderr
    assert f"granted {role} kmsd's runtime privileges" in done.stdout
    again = kmsd(env, "migrate", "--grant-to", role)  # idempotent: after every upgrade
    assert again.returncode == 0, again.stderr
    assert "none pending" in again.stdout

    as_kmsd = Postgres(as_role(env["KMSD_DATABASE_URL"], role))
    try:
        for statement, refusal in [
            ("UPDATE audit_log SET target = 'x'", "permission denied for table audit_log"),
            ("ALTER TABLE audit_log DISABLE TRIGGER ALL", "must be owner of table audit_log"),
            ("TRUNCATE audit_log", "permission denied for table audit_log"),
            ("DROP TABLE secrets", "must be owner of table secrets"),
        ]:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match=refusal):
                as_kmsd.fetch(statement)
    finally:
        as_kmsd.close()

    served = {
        **env,
        "KMSD_DATABASE_URL": as_role(env["KMSD_DATABASE_URL"], role),
        "KMSD_SCHEDULER_TICK": "0.2",
        "KMSD_ROTATION_TICK": "0.2",
        "KMSD_WEBHOOK_ALLOWED_CIDRS": "127.0.0.1/32",  # the receiver is on loopback
    }
    replica = Replica(served, tmp_path)  # starts: nothing pending, a read-only check
    hooks = Deliveries()
    owner = Postgres(env["KMSD_DATABASE_URL"])
    try:
        wait_for(lambda: replica.gauge("kmsd_scheduler_leader") == 1, "the leader", 10)
        ops = Ops(replica, admin, moto_endpoint)
        ops("node", "create", APP, "--parents")
        ops.put(APP, "db", {"password": "old"})
        assert [s["name"] for s in ops.json("effective", APP)["secrets"]] == ["db"]
        ops.json("app", "webhook", APP, "--url", hooks.url)
        ops.json("rotate", "start", APP, "db", "--value", json.dumps({"password": "new"}))
        wait_for(lambda: "start" in hooks.actions(), "the start event's webhook", 10)
        assert ops.json("audit", "verify")["ok"] is True
        users = owner.fetch(
            "SELECT DISTINCT a.usename, r.rolsuper FROM pg_stat_activity a"
            " JOIN pg_roles r ON r.oid = a.usesysid"
            " WHERE a.datname = current_database() AND a.application_name LIKE 'kmsd%'"
        )
        assert users == [{"usename": role, "rolsuper": False}]
    finally:
        hooks.close()
        code, log = replica.stop()
    assert code == 0, log

    # A migration pending (here: its record removed) stops a start as the role, in one line.
    last = owner.fetchval("SELECT max(version) FROM kmsd_migrations")
    row = owner.fetch("DELETE FROM kmsd_migrations WHERE version = $1 RETURNING *", last)[0]
    try:
        refused = kmsd(served, "serve", "--wait-db", "0")
    finally:
        owner.fetch(
            "INSERT INTO kmsd_migrations (version, name, checksum, applied_at)"
            " VALUES ($1, $2, $3, $4)",
            *row.values(),
        )
        owner.close()
    assert refused.returncode == 1, refused.stderr
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("kmsd:")]
    assert row["name"] in line
    assert f"run `kmsd migrate --grant-to {role}` as the owner" in line
    assert "Traceback" not in refused.stderr
