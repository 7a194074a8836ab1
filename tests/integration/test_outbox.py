"""Writes in doubt for on-call: listed, a quarantined one retried or discarded, by whom."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from kmsd.keys import POOL, SM
from kmsd.services.reconcile import QUARANTINE_AFTER, reconcile
from tests.conftest import Identity
from tests.integration.conftest import Api, intent_doc

App = TestClient[web.Request, web.Application]
PATH = "prod/pay"


async def _secret(api: Api) -> str:
    await api.ok("PUT", f"/v1/nodes/{PATH}?parents=true")
    await api.put_json(f"{PATH}/db", {"password": "first"})
    sm_name: str = await api.client.app[POOL].fetchval(
        "SELECT sm_name FROM secrets WHERE name = 'db'"
    )
    return sm_name


async def _in_doubt(db: asyncpg.Connection, sm_name: str, *, attempts: int = 0) -> int:
    """A put left in doubt (SM's answer lost), having failed ``attempts`` reconcile passes."""
    intent = intent_doc(PATH, "db", sm_name)
    row_id: int = await db.fetchval(
        "INSERT INTO sm_outbox (op, sm_name, version_id, intent, attempts, last_error)"
        " VALUES ('put', $1, $2, $3::jsonb, $4, $5) RETURNING id",
        sm_name,
        str(uuid.uuid4()),
        json.dumps(intent),
        attempts,
        "DataError" if attempts else None,
    )
    return row_id


async def test_writes_in_doubt_are_listed_and_quarantined_ones_marked(
    api: Api, db: asyncpg.Connection
) -> None:
    sm_name = await _secret(api)
    waiting = await _in_doubt(db, sm_name)
    stuck = await _in_doubt(db, sm_name, attempts=QUARANTINE_AFTER)
    everything = await api.ok("GET", "/v1/outbox")
    assert [(w["id"], w["quarantined"]) for w in everything["writes"]] == [
        (waiting, False),
        (stuck, True),
    ]
    (row,) = (await api.ok("GET", "/v1/outbox?quarantined=true"))["writes"]
    assert (row["id"], row["path"], row["name"], row["op"]) == (stuck, PATH, "db", "put")
    assert (row["attempts"], row["last_error"]) == (QUARANTINE_AFTER, "DataError")
    assert everything["quarantine_after"] == QUARANTINE_AFTER


async def test_a_retried_write_is_resolved_by_the_next_pass(
    api: Api, client: App, db: asyncpg.Connection
) -> None:
    sm_name = await _secret(api)
    stuck = await _in_doubt(db, sm_name, attempts=QUARANTINE_AFTER)
    skipped = await reconcile(client.app[POOL], client.app[SM], timedelta(0))
    assert sum(skipped.values()) == 0  # quarantined: left alone
    assert await api.ok("POST", f"/v1/outbox/{stuck}/retry") == {"id": stuck, "retried": True}
    resolved = await reconcile(client.app[POOL], client.app[SM], timedelta(0))
    assert resolved["drop"] == 1  # SM never had the version: the intent goes
    assert await db.fetchval("SELECT count(*) FROM sm_outbox") == 0


async def test_a_discarded_write_is_gone_and_audited(api: Api, db: asyncpg.Connection) -> None:
    sm_name = await _secret(api)
    stuck = await _in_doubt(db, sm_name, attempts=QUARANTINE_AFTER)
    watermark = await db.fetchval("SELECT coalesce(max(seq), 0) FROM audit_log")
    assert await api.ok("DELETE", f"/v1/outbox/{stuck}") == {"id": stuck, "discarded": True}
    assert await db.fetchval("SELECT count(*) FROM sm_outbox") == 0
    # Audit rows are written before the answer (fail closed): they are there now.
    rows = await db.fetch(
        "SELECT target, outcome FROM audit_log WHERE action = 'outbox.discard' AND seq > $1"
        " ORDER BY seq",
        watermark,
    )
    assert [(r["target"], r["outcome"]) for r in rows] == [
        (f"outbox {stuck}", "attempt"),
        (f"{PATH}/db outbox {stuck}", "allowed"),
    ]


async def test_only_quarantined_writes_are_retried_or_discarded(
    api: Api, db: asyncpg.Connection
) -> None:
    sm_name = await _secret(api)
    waiting = await _in_doubt(db, sm_name)
    for method, url in (
        ("POST", f"/v1/outbox/{waiting}/retry"),
        ("DELETE", f"/v1/outbox/{waiting}"),
    ):
        status, problem = await api.call(method, url)
        assert status == 409, problem
        assert "resolves it by itself" in problem["detail"]
    assert await db.fetchval("SELECT count(*) FROM sm_outbox") == 1


async def test_what_a_caller_cannot_view_is_not_there(
    api: Api, reader_api: Api, reader: Identity, db: asyncpg.Connection
) -> None:
    sm_name = await _secret(api)
    stuck = await _in_doubt(db, sm_name, attempts=QUARANTINE_AFTER)
    assert (await reader_api.ok("GET", "/v1/outbox"))["writes"] == []
    # Not the reader's: the same 404 as an id that names no write, and nothing changes.
    for url in (f"/v1/outbox/{stuck}", "/v1/outbox/987654321", "/v1/outbox/١٢"):
        status, problem = await reader_api.call("DELETE", url)
        assert status == 404, (url, problem)
    # Able to view but not to administer: it is listed, and acting on it is refused.
    await api.grant(reader.arn, "prod", "view")
    listed = (await reader_api.ok("GET", "/v1/outbox"))["writes"]
    assert [w["id"] for w in listed] == [stuck]
    status, _ = await reader_api.call("POST", f"/v1/outbox/{stuck}/retry")
    assert status == 403
    assert await db.fetchval("SELECT attempts FROM sm_outbox WHERE id = $1", stuck) == (
        QUARANTINE_AFTER
    )
