"""``GET /v1/openapi.json`` over HTTP, and the refusals that schemathesis showed were missing.

Each test in the second part is one finding of ``tests/e2e/test_schemathesis.py``: a request
that got a 500 (or an answer the document calls wrong) before, and now gets the 4xx problem
it should.
"""

from __future__ import annotations

import base64
import re
import uuid
from typing import Any

import asyncpg
import boto3
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from kmsd.http.openapi import build
from kmsd.keys import POOL
from tests.conftest import Identity, _fresh_database
from tests.integration.conftest import Api, ClientFactory, login_body, sign_in, snapshot

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
    assert problem["detail"].startswith("'url'"), problem  # refused as a URL, before any lookup
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


# -- answers as documented ---------------------------------------------------------------------


class Documented:
    """Checks an answer against the operation's documented status, media type and schema."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.doc = build()
        self.registry: Registry[Any] = Registry().with_resource(
            "urn:kmsd", Resource(contents=self.doc, specification=DRAFT202012)
        )
        self.seen: set[tuple[str, str]] = set()

    async def __call__(
        self, method: str, template: str, url: str, headers: Any = None, **kw: Any
    ) -> Any:
        sent = self.api.headers if headers is None else headers
        async with self.api.client.request(
            method, url, headers=sent, allow_redirects=False, **kw
        ) as resp:
            raw = await resp.read()
            status, media = resp.status, resp.content_type
        op = self.doc["paths"][template][method.lower()]
        assert str(status) in op["responses"], (method, url, status, raw[:300])
        self.seen.add((method, template))
        answer = op["responses"][str(status)]
        if "$ref" in answer:
            answer = self.doc["components"]["responses"][str(status)]
        if "content" not in answer:
            assert not raw, (method, url, status)
            return None
        assert media in answer["content"], (method, url, status, media)
        if not media.endswith("json"):
            return raw.decode()
        body = orjson.loads(raw)
        self.validate(method, template, status, media, body)
        return body

    def validate(self, method: str, template: str, status: int, media: str, body: Any) -> None:
        """Validate ``body`` against the documented schema (references resolved in place)."""
        parts = ("paths", template, method.lower(), "responses", str(status))
        if status >= 400:
            parts = ("components", "responses", str(status))
        pointer = "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)
        pointer += "/content/" + media.replace("/", "~1") + "/schema"
        validator = Draft202012Validator({"$ref": f"urn:kmsd#/{pointer}"}, registry=self.registry)
        validator.validate(body)


@pytest.fixture
async def own_api(
    make_client: ClientFactory, pg_server_dsn: str, admin: Identity, moto_endpoint: str
) -> Api:
    """An admin on a kmsd with a database of its own (migrated at start-up): the tour's audit
    rows must not meet the tests that count rows of an action in the shared one."""
    dsn = await _fresh_database(pg_server_dsn, f"kmsd_tour_{uuid.uuid4().hex[:8]}")
    return await sign_in(await make_client(database_url=dsn), admin, moto_endpoint)


async def test_answers_are_what_the_document_says(
    own_api: Api, reader: Identity, moto_endpoint: str
) -> None:
    """One tour of the API's successful paths (schemathesis mostly meets refusals)."""
    call = Documented(own_api)
    app, node, ref = "prod/pay", "prod/pay/us-east-1", "prod/pay/db"
    await call("PUT", "/v1/nodes/{path}", f"/v1/nodes/{node}?parents=true")
    await call("PUT", "/v1/nodes/{path}", "/v1/nodes/prod/billing")
    await call("GET", "/v1/nodes", "/v1/nodes")
    await call("GET", "/v1/nodes/{path}", f"/v1/nodes/{app}")
    secret = {"kind": "json", "value": {"user": "u", "password": "p"}, "tags": {"team": "pay"}}
    await call("PUT", "/v1/secrets/{ref}", f"/v1/secrets/{ref}", json=secret)
    await call("PUT", "/v1/secrets/{ref}", f"/v1/secrets/{ref}", json=secret)
    binary = {"kind": "binary", "value_b64": "YWJj"}
    await call("PUT", "/v1/secrets/{ref}", f"/v1/secrets/{node}/tls", json=binary)
    await call("GET", "/v1/secrets/{ref}", f"/v1/secrets/{ref}")
    await call("POST", "/v1/generate/{ref}", f"/v1/generate/{app}/sig", json={"use": "signing"})
    await call("GET", "/v1/secrets/{ref}", f"/v1/secrets/{app}/sig")
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name="us-east-1")
    cmk = kms.create_key()["KeyMetadata"]["Arn"]
    await call("POST", "/v1/datakeys/{ref}", f"/v1/datakeys/{app}/files", json={"cmk": cmk})
    await call("POST", "/v1/shares", "/v1/shares", json={"secret": ref, "to": "prod/billing"})
    target = {"target": ref}
    await call("PUT", "/v1/refs/{ref}", "/v1/refs/prod/billing/pay-db", json=target)
    await call("GET", "/v1/effective/{path}", "/v1/effective/prod/billing")
    effective = await call("GET", "/v1/effective/{path}", f"/v1/effective/{node}")
    watch = {"path": node, "path_version": 0, "instance_id": "i-1", "held": {}}
    await call("POST", "/v1/watch", "/v1/watch?timeout=0", json=watch)
    watch = {**watch, "path_version": effective["path_version"], "role": "observer"}
    await call("POST", "/v1/watch", "/v1/watch?timeout=0", json=watch)
    await call("GET", "/v1/adoption/{path}", f"/v1/adoption/{node}")
    await call(
        "GET", "/v1/iam-policy/app/{path}", f"/v1/iam-policy/app/{app}?source_cidr=10.0.0.0/8"
    )
    await call("GET", "/v1/iam-policy/drift/{path}", f"/v1/iam-policy/drift/{node}")  # never
    await call("GET", "/v1/iam-policy/app/{path}", f"/v1/iam-policy/app/{node}?shape=exact")
    await call("GET", "/v1/iam-policy/drift/{path}", f"/v1/iam-policy/drift/{app}")
    await call("GET", "/v1/iam-policy/server", "/v1/iam-policy/server")
    rotation = {"path": app, "name": "db", "value": {"user": "u", "password": "q"}}
    rot = await call("POST", "/v1/rotations", "/v1/rotations", json=rotation)
    await call("GET", "/v1/rotations", "/v1/rotations?active=true")
    await call("GET", "/v1/rotations/{id}", f"/v1/rotations/{rot['id']}")
    await call("POST", "/v1/rotations/{id}/{verb}", f"/v1/rotations/{rot['id']}/pause")
    await call("POST", "/v1/rotations/{id}/{verb}", f"/v1/rotations/{rot['id']}/advance")
    link = await call("POST", "/v1/console/links", "/v1/console/links")
    await call("GET", "/ui/login", link["path"], headers={})
    # The pages open with the console session's cookie alone (an API token opens no page).
    assert isinstance(await call("GET", "/ui/rotations", "/ui/rotations", headers={}), str)
    assert isinstance(await call("GET", "/ui/tree", "/ui/tree", headers={}), str)
    assert isinstance(await call("GET", "/ui/node/{path}", f"/ui/node/{node}", headers={}), str)
    await call("GET", "/ui/node/{path}", "/ui/node/prod/nothing", headers={})
    assert isinstance(await call("GET", "/ui/secret/{path}", f"/ui/secret/{ref}", headers={}), str)
    await call("GET", "/ui/secret/{path}", f"/ui/secret/{app}/nothing", headers={})
    page = await call("GET", "/ui/rotations/{id}", f"/ui/rotations/{rot['id']}", headers={})
    assert isinstance(page, str)
    await call("GET", "/ui/access", f"/ui/access?path={app}", headers={})
    await call("GET", "/ui/audit", f"/ui/audit?path={app}&verify=1", headers={})
    await call("GET", "/ui/fleet", "/ui/fleet", headers={})
    await call("GET", "/ui/expiring", "/ui/expiring?days=400", headers={})
    await call("GET", "/ui/", "/ui/", headers={})
    await call("GET", "/ui/assets/{name}", "/ui/assets/console.css", headers={})
    await call("GET", "/ui/assets/{name}", "/ui/assets/nothing.css", headers={})
    csrf = re.search(r'name="csrf" content="([0-9a-f]+)"', page)
    assert csrf is not None
    await call("POST", "/ui/logout", "/ui/logout", headers={"X-Kmsd-Csrf": csrf[1]})
    await call("GET", "/ui/signed-out", "/ui/signed-out", headers={})
    await call("DELETE", "/v1/adoption/{path}", f"/v1/adoption/{node}?instance=i-1")
    await call("DELETE", "/v1/adoption/{path}", f"/v1/adoption/{node}?instance=i-1")
    grant = {"principal": reader.arn, "path": app, "permission": "read"}
    binding = await call("POST", "/v1/bindings", "/v1/bindings", json=grant)
    await call("GET", "/v1/bindings", f"/v1/bindings?path={app}")
    await call("GET", "/v1/auth/whoami", "/v1/auth/whoami")
    await call("DELETE", "/v1/bindings/{id}", f"/v1/bindings/{binding['id']}")
    await call("GET", "/v1/expiring", "/v1/expiring?days=400")
    stuck = [  # two writes in doubt the reconciler gave up on
        await own_api.client.app[POOL].fetchval(
            "INSERT INTO sm_outbox (op, sm_name, version_id, intent, attempts, last_error)"
            " VALUES ('put', 'kmsd/x', $1, $2::jsonb, 99, 'DataError') RETURNING id",
            str(uuid.uuid4()),
            '{"path": "prod/pay", "name": "db"}',
        )
        for _ in range(2)
    ]
    await call("GET", "/v1/outbox", "/v1/outbox?quarantined=true")
    await call("POST", "/v1/outbox/{id}/retry", f"/v1/outbox/{stuck[0]}/retry")
    await call("DELETE", "/v1/outbox/{id}", f"/v1/outbox/{stuck[1]}")
    await call("GET", "/v1/audit", f"/v1/audit?path={app}&limit=5")
    await call("POST", "/v1/audit/verify", "/v1/audit/verify")
    await call("DELETE", "/v1/refs/{ref}", "/v1/refs/prod/billing/pay-db")
    await call("DELETE", "/v1/shares", f"/v1/shares?secret={ref}&to=prod/billing")
    await call("DELETE", "/v1/webhooks/{path}", f"/v1/webhooks/{app}")
    await call("DELETE", "/v1/nodes/{path}", f"/v1/nodes/{app}")
    await call("DELETE", "/v1/secrets/{ref}", f"/v1/secrets/{node}/tls")
    await call("GET", "/v1/openapi.json", "/v1/openapi.json")
    await call("GET", "/healthz", "/healthz")
    await call("GET", "/metrics", "/metrics")
    # Sign-in last: a fresh token for the same caller.
    signed = login_body(reader, moto_endpoint)
    await call("POST", "/v1/auth/aws/login", "/v1/auth/aws/login", json=signed)
    documented = {
        (method.upper(), path) for path, item in call.doc["paths"].items() for method in item
    }
    with pytest.raises(ValidationError):  # the check can fail
        call.validate("GET", "/v1/nodes", 200, "application/json", {"namespaces": [1]})
    with pytest.raises(ValidationError):
        call.validate("GET", "/v1/nodes", 404, "application/problem+json", {"type": "x"})
    # Not toured: the event stream (open until the rotation ends) and setting a webhook
    # (its URL must resolve; tests/integration/test_rotation.py sets one).
    left = documented - call.seen
    assert left == {("GET", "/ui/rotations/{id}/events"), ("PUT", "/v1/webhooks/{path}")}
