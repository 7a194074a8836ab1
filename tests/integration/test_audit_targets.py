"""The trail names what each change acts on in its ``attempt`` row too (written before the
handler runs), also when the body, the query or an id names it; a binding's revoke names the
binding. Real HTTP and PostgreSQL; each test reads only its own rows of the shared trail."""

from __future__ import annotations

from typing import Any

import asyncpg

from tests.conftest import Identity
from tests.integration.conftest import Api
from tests.integration.test_rotation import OWNER, setup_shared, start


async def _rows(db: asyncpg.Connection, since: int) -> list[tuple[str, str, str]]:
    rows = await db.fetch(
        "SELECT action, outcome, target FROM audit_log WHERE seq > $1 ORDER BY seq", since
    )
    return [(r["action"], r["outcome"], r["target"]) for r in rows]


async def _since(db: asyncpg.Connection) -> int:
    seq: int = await db.fetchval("SELECT coalesce(max(seq), 0) FROM audit_log")
    return seq


async def test_attempt_rows_carry_the_target_named_in_the_body_or_query(
    api: Api, reader: Identity, db: asyncpg.Connection
) -> None:
    await setup_shared(api)
    await api.ok("PUT", "/v1/nodes/prod/other")
    secret = f"{OWNER}/db"
    # action, method, URL, body, the target both rows name
    calls: list[tuple[str, str, str, dict[str, Any] | None, str]] = [
        (
            "binding.grant",
            "POST",
            "/v1/bindings",
            {"principal": reader.arn, "path": OWNER, "permission": "read"},
            OWNER,
        ),
        (
            "rotation.start",
            "POST",
            "/v1/rotations",
            {"path": OWNER, "name": "db", "value": {"password": "n"}},
            secret,
        ),
        ("share.create", "POST", "/v1/shares", {"secret": secret, "to": "prod/other"}, secret),
        ("share.delete", "DELETE", f"/v1/shares?secret={secret}&to=prod/other", None, secret),
        (
            "adoption.forget",
            "DELETE",
            f"/v1/adoption/{OWNER}?instance=i-gone",
            None,
            f"{OWNER} instance i-gone",
        ),
    ]
    for action, method, url, body, target in calls:
        since = await _since(db)
        await api.call(method, url, json=body)
        rows = await _rows(db, since)
        assert [(a, t) for a, o, t in rows if o == "attempt"] == [(action, target)], rows
        assert [(a, t) for a, o, t in rows if o != "attempt"] == [(action, target)], rows


async def test_a_body_that_does_not_parse_is_refused_before_any_attempt(
    api: Api, db: asyncpg.Connection
) -> None:
    """Nothing can happen, so no attempt row; and the stream is never read twice (a body
    refused half-read must not leave its rest to the handler)."""
    since = await _since(db)
    status, _ = await api.call(
        "POST", "/v1/bindings", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert await _rows(db, since) == [("binding.grant", "rejected", "")]


async def test_a_revoke_names_the_binding_in_both_rows_and_is_found_by_its_path(
    api: Api, reader: Identity, db: asyncpg.Connection
) -> None:
    await api.ok("PUT", f"/v1/nodes/{OWNER}?parents=true")
    binding = (await api.grant(reader.arn, OWNER, "read"))["id"]
    since = await _since(db)
    await api.ok("DELETE", f"/v1/bindings/{binding}")
    target = f"{OWNER} binding {binding}"
    assert await _rows(db, since) == [
        ("binding.revoke", "attempt", target),
        ("binding.revoke", "allowed", target),
    ]
    listed = await api.ok("GET", f"/v1/audit?path={OWNER}&action=binding.revoke")
    assert {(r["outcome"], r["target"]) for r in listed["rows"]} >= {
        ("attempt", target),
        ("allowed", target),
    }
    # A binding that is not there (any more): still named.
    since = await _since(db)
    status, _ = await api.call("DELETE", f"/v1/bindings/{binding}")
    assert status == 404
    assert await _rows(db, since) == [
        ("binding.revoke", "attempt", f"binding {binding}"),
        ("binding.revoke", "rejected", f"binding {binding}"),
    ]


async def test_a_rotation_command_attempt_names_the_rotation(
    api: Api, db: asyncpg.Connection
) -> None:
    await setup_shared(api)
    rot = await start(api)
    since = await _since(db)
    await api.ok("POST", f"/v1/rotations/{rot['id']}/abort")
    rows = await _rows(db, since)
    assert rows[0] == ("rotation.command", "attempt", f"rotation {rot['id']}: abort")
    assert rows[-1] == ("rotation.command", "allowed", f"{OWNER}/db rotation {rot['id']}: abort")
