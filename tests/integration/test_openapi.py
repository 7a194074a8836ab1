"""``GET /v1/openapi.json`` over HTTP, and the refusals that schemathesis showed were missing.

Each test in the second part is one finding of ``tests/e2e/test_schemathesis.py``: a request
that got a 500 (or an answer the document calls wrong) before, and now gets the 4xx problem
it should.
"""

from __future__ import annotations

import base64
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from kmsd.http.openapi import build
from tests.conftest import Identity
from tests.integration.conftest import Api, login_body, snapshot

Client = TestClient[web.Request, web.Application]


async def test_the_document_is_served_without_a_token_and_audited(
    client: Client, db: asyncpg.Connection
) -> None:
    async with client.get("/v1/openapi.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert orjson.loads(await resp.read()) == build()
    row = await db.fetchrow("SELECT principal, action, outcome FROM audit_log ORDER BY seq DESC")
    assert row is not None
    assert dict(row) == {"principal": "-", "action": "openapi.read", "outcome": "allowed"}


async def test_a_405_names_the_methods_it_allows(api: Api) -> None:
    async with api.client.request("PATCH", "/v1/auth/whoami", headers=api.headers) as resp:
        assert resp.status == 405
        assert resp.content_type == "application/problem+json"
        assert set(resp.headers["Allow"].split(",")) >= {"GET"}


@pytest.mark.parametrize("raw", ["99999999999999999999", str(2**63), "0", "-1"])
async def test_a_binding_id_outside_bigint_is_not_found(api: Api, raw: str) -> None:
    status, problem = await api.call("DELETE", f"/v1/bindings/{raw}")
    assert (status, problem["status"]) == (404, 404)


@pytest.mark.parametrize(
    "query",
    [
        "/v1/rotations?active=null",
        "/v1/shares?secret=prod/pay/db&to=prod/billing&remove_refs=yes-please",
    ],
)
async def test_a_flag_that_is_not_true_or_false_is_refused(api: Api, query: str) -> None:
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    await api.put_json("prod/pay/db", {"a": "b"})
    method = "GET" if "rotations" in query else "DELETE"
    status, problem = await api.call(method, query)
    assert status == 400
    assert "must be true or false" in problem["detail"]


@pytest.mark.parametrize("value_b64", ["d\u00a0m", 1234, None])
async def test_a_rotation_value_b64_must_be_base64_text(
    api: Api, db: asyncpg.Connection, value_b64: Any
) -> None:
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    await api.ok("PUT", "/v1/secrets/prod/pay/cert", json={"kind": "binary", "value_b64": "YWJj"})
    before = await snapshot(db)
    body = {"path": "prod/pay", "name": "cert", "value_b64": value_b64}
    status, problem = await api.call("POST", "/v1/rotations", json=body)
    assert status == 400, problem
    assert "value_b64" in problem["detail"]
    assert await snapshot(db) == before


@pytest.mark.parametrize(
    "extra",
    [
        {"description": "a\u0000b"},
        {"tags": {"team\u0000": "payments"}},
        {"tags": {"team": "pay\u0000ments"}},
    ],
)
async def test_text_kmsd_would_store_cannot_hold_nul(
    api: Api, db: asyncpg.Connection, extra: dict[str, Any]
) -> None:
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    before = await snapshot(db)
    status, problem = await api.call(
        "PUT", "/v1/secrets/prod/pay/db", json={"kind": "json", "value": {"a": "b"}, **extra}
    )
    assert status == 400, problem
    assert "NUL" in problem["detail"]
    assert "\u0000" not in problem["detail"]
    assert (await snapshot(db))["secrets"] == before["secrets"]


async def test_a_secret_value_may_hold_nul(api: Api) -> None:
    """The value goes to Secrets Manager only: it is the caller's, NUL or not."""
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    doc = await api.put_json("prod/pay/db", {"a": "b\u0000c"})
    assert doc["created"] is True


@pytest.mark.parametrize(
    "report",
    [
        {"held": {"db": "v\u0000"}},
        {"processes": {"\u0000": {}}},
        {"app_process_ids": ["4\u00002"]},
        {"versions": {"db": ["\u0000"]}},
    ],
)
async def test_a_watch_report_cannot_hold_nul(api: Api, report: dict[str, Any]) -> None:
    """Such a report was accepted, then failed every flush of the adoption buffer."""
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    body = {"path": "prod/pay", "instance_id": "i-1", **report}
    status, problem = await api.call("POST", "/v1/watch?timeout=0", json=body)
    assert status == 400, problem
    assert "NUL" in problem["detail"]


@pytest.mark.parametrize(
    "call",
    [
        "/v1/audit?action=%00",
        "/v1/audit?principal=a%00b",
        "/v1/audit?outcome=%00",
        "/v1/bindings?path=%00",
    ],
)
async def test_a_query_parameter_cannot_hold_nul(api: Api, call: str) -> None:
    """Checked for every call before its handler (DELETE /v1/adoption's ?instance= too; not
    called here: tests/integration/test_trust.py counts every adoption.forget row)."""
    status, problem = await api.call("GET", call)
    assert (status, problem["status"]) == (400, 400)
    assert "NUL" in problem["detail"]


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/hook",  # an unclosed IPv6 literal
        "http://" + "a" * 64 + ".example.com/",  # a DNS label over 63 characters
        "http://" + "a." * 130 + "com/",  # a name over 253 characters
        "http://hooks.example.com:99999/",
        "http://hooks.example.com:port/",
        "http://hooks example.com/",
        "http://hooks.example.com/\n",
        "http://bücher.example/",
        "http://-bad-.example/",
        "ftp://hooks.example.com/",
        "http:///hook",
        "https://hooks.example.com/" + "x" * 2048,
    ],
)
async def test_a_webhook_url_is_checked_before_its_host_is_resolved(
    api: Api, db: asyncpg.Connection, url: str
) -> None:
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    status, problem = await api.call("PUT", "/v1/webhooks/prod/pay", json={"url": url})
    assert status == 400, problem
    assert problem["detail"].startswith("'url' must be an http(s) URL")
    assert await db.fetchval("SELECT count(*) FROM webhooks") == 0


async def test_a_sign_in_url_that_is_no_url_is_rejected(client: Client) -> None:
    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    body = {
        "iam_http_request_method": "POST",
        "iam_request_url": b64(b"http://[::1"),
        "iam_request_body": b64(b"Action=GetCallerIdentity&Version=2011-06-15"),
        "iam_request_headers": b64(b"{}"),
    }
    async with client.post("/v1/auth/aws/login", json=body) as resp:
        problem = await resp.json(content_type=None)
        assert resp.status == 401, problem
        assert problem["type"].endswith("/login-rejected")


@pytest.mark.parametrize(
    "extra",
    [
        {"x-extra": "a\r\nb"},  # would be a header injection; aiohttp refused it with a 500
        {"x-extra": "a\u0000b"},
        {"x-\u00fc": "a"},  # names that are not tokens went to STS, and came back as 502
        {"x extra": "a"},
        {"": "a"},
    ],
)
async def test_a_signed_header_that_is_no_http_header_is_rejected(
    client: Client, admin: Identity, moto_endpoint: str, extra: dict[str, str]
) -> None:
    """Found by reading after schemathesis: its requests are never signed, so never reach it."""
    body = login_body(admin, moto_endpoint)
    headers = orjson.loads(base64.b64decode(body["iam_request_headers"]))
    body["iam_request_headers"] = base64.b64encode(orjson.dumps({**headers, **extra})).decode()
    async with client.post("/v1/auth/aws/login", json=body) as resp:
        problem = await resp.json(content_type=None)
        assert resp.status == 401, problem
        assert "not a well-formed HTTP header" in problem["detail"]
