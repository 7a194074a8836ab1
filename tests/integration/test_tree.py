"""The tree over HTTP: create, show, delete (refused while not empty unless recursive)."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from kmsd.config import Settings
from tests.integration.conftest import Api, snapshot


async def test_create_namespace_application_and_children(api: Api) -> None:
    assert (await api.ok("PUT", "/v1/nodes/prod"))["created"] == ["prod"]
    assert (await api.ok("PUT", "/v1/nodes/prod/payments"))["created"] == ["prod/payments"]
    doc = await api.ok("PUT", "/v1/nodes/prod/payments/us-east-1/blue?parents=true")
    assert doc["created"] == ["prod/payments/us-east-1", "prod/payments/us-east-1/blue"]
    status, again = await api.call("PUT", "/v1/nodes/prod/payments")
    assert (status, again["created"]) == (200, [])
    node = await api.ok("GET", "/v1/nodes/prod/payments")
    assert (node["level"], node["children"], node["secrets"]) == ("application", ["us-east-1"], [])
    assert (await api.ok("GET", "/v1/nodes"))["namespaces"] == ["prod"]


async def test_missing_parent_is_404_and_creates_nothing(api: Api, db: asyncpg.Connection) -> None:
    await api.ok("PUT", "/v1/nodes/prod")
    before = await snapshot(db)
    status, doc = await api.call("PUT", "/v1/nodes/prod/payments/eu")
    assert status == 404
    assert "prod/payments" in doc["detail"]
    assert await snapshot(db) == before


@pytest.mark.parametrize(
    "path",
    [
        "Prod",
        "-prod",
        "prod/Pay",
        "prod//x",
        "prod/x/",
        "prod/" + "a" * 64,
        "prod/pay%20x",
        "prod/ä",
    ],
)
async def test_bad_names_are_400_and_leave_nothing(
    api: Api, db: asyncpg.Connection, path: str
) -> None:
    await api.ok("PUT", "/v1/nodes/prod")
    before = await snapshot(db)
    status, doc = await api.call("PUT", f"/v1/nodes/{path}?parents=true")
    assert status == 400, doc
    assert doc["type"].endswith("/invalid-input")
    assert "[a-z0-9][a-z0-9._-]{0,62}" in doc["detail"] or "path" in doc["detail"]
    assert await snapshot(db) == before


async def test_problem_json_content_type(api: Api) -> None:
    async with api.client.put("/v1/nodes/BAD", headers=api.headers) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/problem+json"
        doc = await resp.json(content_type=None)
    assert set(doc) >= {"type", "title", "status", "detail", "request_id"}


async def test_delete_refused_while_children_or_secrets(api: Api, db: asyncpg.Connection) -> None:
    await api.ok("PUT", "/v1/nodes/prod/payments/eu?parents=true")
    await api.put_json("prod/payments/db", {"user": "u"})
    before = await snapshot(db)
    status, doc = await api.call("DELETE", "/v1/nodes/prod/payments")
    assert status == 409
    assert (doc["children"], doc["secrets"]) == (1, 1)
    assert await snapshot(db) == before
    # A leaf holding only a secret is refused as well.
    await api.put_json("prod/payments/eu/db", {"user": "u"})
    assert (await api.call("DELETE", "/v1/nodes/prod/payments/eu"))[0] == 409


async def test_recursive_delete_removes_subtree_and_schedules_sm_deletion(
    api: Api, db: asyncpg.Connection, sm_client: Any, settings: Settings
) -> None:
    await api.ok("PUT", "/v1/nodes/prod/payments/eu?parents=true")
    await api.ok("PUT", "/v1/nodes/prod/billing")
    await api.put_json("prod/payments/db", {"user": "u"})
    await api.put_json("prod/payments/eu/db", {"user": "v"})
    await api.put_json("prod/billing/db", {"user": "w"})
    doc = await api.ok("DELETE", "/v1/nodes/prod/payments?recursive=true")
    assert doc["secrets_deleted"] == 2
    paths = [r["path"] for r in await db.fetch("SELECT path FROM nodes ORDER BY path")]
    assert paths == ["prod", "prod/billing"]
    assert await db.fetchval("SELECT count(*) FROM secrets") == 1
    assert await db.fetchval("SELECT count(*) FROM sm_outbox") == 0
    prefix = settings.sm_prefix
    for name in ("prod/payments/db", "prod/payments/eu/db"):
        assert sm_client.describe_secret(SecretId=prefix + name).get("DeletedDate") is not None
    assert sm_client.describe_secret(SecretId=prefix + "prod/billing/db").get("DeletedDate") is None


async def test_recreated_secret_after_deletion_is_restored_in_sm(api: Api, sm_client: Any) -> None:
    await api.ok("PUT", "/v1/nodes/prod/payments?parents=true")
    first = await api.put_json("prod/payments/db", {"v": "1"})
    await api.ok("DELETE", "/v1/secrets/prod/payments/db")
    second = await api.put_json("prod/payments/db", {"v": "2"})
    assert second["created"] is True
    assert second["sm_arn"] == first["sm_arn"]
    assert sm_client.describe_secret(SecretId=second["sm_arn"]).get("DeletedDate") is None


async def test_unknown_route_and_method_are_problems(api: Api) -> None:
    status, doc = await api.call("GET", "/v1/nope")
    assert (status, doc["status"]) == (404, 404)
    status, doc = await api.call("POST", "/v1/effective/prod/app")
    assert (status, doc["type"].rsplit("/", 1)[1]) == (405, "method-not-allowed")
