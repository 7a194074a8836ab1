"""Class 12, secrets at rest in PostgreSQL: a dump holds no webhook key and no token, kmsd's
own role cannot rewrite its trail, and the trail names what each change acted on."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.conftest import REGION, SERVER_ID
from tests.e2e.harness import BIN
from tests.security.conftest import APP, WEBHOOK_RECEIVER, Target

KLASS = "12 secrets at rest"


def _dump(target: Target) -> bytes:
    """Every row of every table of kmsd's database, as text: what a stolen dump shows."""
    tables = target.db(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
    )
    out: list[str] = []
    for t in tables:
        name = t["tablename"]
        rows = target.db(f'SELECT row_to_json(x)::text AS r FROM "{name}" x')  # noqa: S608
        out.extend(r["r"] for r in rows)
    return "\n".join(out).encode()


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    decoded = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
    return [raw, decoded.hex().encode(), base64.b64encode(decoded).rstrip(b"=")]


def webhook_key_is_not_stored(target: Target) -> tuple[bool, str]:
    doc = target.call("PUT", f"/v1/webhooks/{APP}", {"url": f"http://{WEBHOOK_RECEIVER}:9/hook"})
    key = str(doc["hmac_key"])
    dump = _dump(target)
    found = [f for f in _forms(key) if f in dump]
    return not found, f"the key's forms found in the dump: {len(found)}"


def no_token_in_a_dump(target: Target) -> tuple[bool, str]:
    dump = _dump(target)
    found = [name for name, token in target.tokens.items() if token.encode() in dump]
    return not found, f"tokens in the dump: {found}"


def _as_role(dsn: str, role: str) -> str:
    parts = urlsplit(dsn)
    netloc = f"{role}@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def kmsds_role_cannot_rewrite_the_trail(target: Target) -> tuple[bool, str]:
    role = f"kmsd_sec_{uuid.uuid4().hex[:8]}"
    target.db(f"CREATE ROLE {role} LOGIN")
    try:
        subprocess.run(
            [str(BIN / "kmsd"), "migrate", "--grant-to", role],
            env={
                "KMSD_DATABASE_URL": target.dsn,
                "KMSD_SERVER_ID": SERVER_ID,
                "AWS_DEFAULT_REGION": REGION,
                "PATH": "/usr/bin:/bin",
            },
            check=True,
            capture_output=True,
            timeout=60,
        )
        refused = asyncio.run(_tamper_as(_as_role(target.dsn, role)))
    finally:
        target.db(f"DROP OWNED BY {role}")
        target.db(f"DROP ROLE {role}")
    return all(refused.values()), f"refused: {refused}"


async def _tamper_as(dsn: str) -> dict[str, bool]:
    statements = {
        "update": "UPDATE audit_log SET principal = 'nobody'",
        "delete": "DELETE FROM audit_log",
        "truncate": "TRUNCATE audit_log",
        "disable-triggers": "ALTER TABLE audit_log DISABLE TRIGGER ALL",
        "drop": "DROP TABLE secrets",
    }
    refused = {}
    conn = await asyncpg.connect(dsn)
    try:
        for name, sql in statements.items():
            try:
                await conn.execute(sql)
                refused[name] = False
            except asyncpg.InsufficientPrivilegeError:
                refused[name] = True
    finally:
        await conn.close()
    return refused


def attempt_rows_name_the_body_target(target: Target) -> tuple[bool, str]:
    before = target.db("SELECT coalesce(max(seq), 0) AS s FROM audit_log")[0]["s"]
    who = f"arn:aws:iam::123456789012:role/at-rest-{uuid.uuid4().hex[:6]}"
    target.call("POST", "/v1/bindings", {"principal": who, "path": APP, "permission": "read"})
    rows = target.db(
        "SELECT outcome, target FROM audit_log WHERE seq > $1 AND action = 'binding.grant'"
        " ORDER BY seq",
        before,
    )
    seen = [(r["outcome"], r["target"]) for r in rows]
    return seen == [("attempt", APP), ("allowed", APP)], f"rows: {seen}"


def revoke_rows_name_the_binding(target: Target) -> tuple[bool, str]:
    who = f"arn:aws:iam::123456789012:role/at-rest-{uuid.uuid4().hex[:6]}"
    made = target.call(
        "POST", "/v1/bindings", {"principal": who, "path": APP, "permission": "read"}
    )
    before = target.db("SELECT coalesce(max(seq), 0) AS s FROM audit_log")[0]["s"]
    target.call("DELETE", f"/v1/bindings/{made['id']}")
    rows = target.db(
        "SELECT target FROM audit_log WHERE seq > $1 AND action = 'binding.revoke'", before
    )
    want = f"{APP} binding {made['id']}"
    return [r["target"] for r in rows] == [want, want], f"targets: {[r['target'] for r in rows]}"


CASES: list[tuple[str, Callable[[Target], tuple[bool, str]]]] = [
    ("webhook-key-not-in-a-dump", webhook_key_is_not_stored),
    ("no-token-in-a-dump", no_token_in_a_dump),
    ("kmsd-role-cannot-rewrite-the-trail", kmsds_role_cannot_rewrite_the_trail),
    ("attempt-row-names-a-body-target", attempt_rows_name_the_body_target),
    ("revoke-rows-name-the-binding", revoke_rows_name_the_binding),
]


@pytest.mark.parametrize(("case_id", "scenario"), CASES, ids=[c[0] for c in CASES])
def test_held(target: Target, case_id: str, scenario: Callable[[Target], tuple[bool, str]]) -> None:
    held, detail = scenario(target)
    target.outcome(KLASS, case_id, held=held, accepted=not held, detail=detail)
    assert held, detail
