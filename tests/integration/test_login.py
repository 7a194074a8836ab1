"""Sign-in through kmsd to moto's STS: genuine requests pass, tampered ones never reach STS.

moto does not check signatures, so every refusal here is kmsd's own check.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import boto3
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import REGION, Identity, free_port
from tests.integration.conftest import Api, ClientFactory, login_body, sign_in

Body = dict[str, str]


def _edit_headers(body: Body, edit: Callable[[dict[str, list[str]]], None]) -> Body:
    headers = json.loads(base64.b64decode(body["iam_request_headers"]))
    edit(headers)
    return {**body, "iam_request_headers": base64.b64encode(json.dumps(headers).encode()).decode()}


def _set(field: str, raw: bytes) -> Callable[[Body], Body]:
    return lambda b: {**b, field: base64.b64encode(raw).decode()}


def _header(name: str, value: str | None) -> Callable[[Body], Body]:
    def edit(h: dict[str, list[str]]) -> None:
        for key in [k for k in h if k.lower() == name.lower()]:
            del h[key]
        if value is not None:
            h[name] = [value]

    return lambda b: _edit_headers(b, edit)


def _unsign_server_id(body: Body) -> Body:
    def edit(h: dict[str, list[str]]) -> None:
        auth = h["Authorization"][0].replace(";x-kmsd-server-id", "")
        h["Authorization"] = [auth]

    return _edit_headers(body, edit)


def _stale(body: Body) -> Body:
    old = (datetime.now(UTC) - timedelta(minutes=20)).strftime("%Y%m%dT%H%M%SZ")
    return _header("X-Amz-Date", old)(body)


TAMPERINGS: list[tuple[str, Callable[[Body], Body], str]] = [
    (
        "wrong action",
        _set("iam_request_body", b"Action=AssumeRole&Version=2011-06-15"),
        "GetCallerIdentity",
    ),
    (
        "second action",
        _set("iam_request_body", b"Action=GetCallerIdentity&Action=AssumeRole&Version=2011-06-15"),
        "exactly one",
    ),
    (
        "extra parameter",
        _set("iam_request_body", b"Action=GetCallerIdentity&Version=2011-06-15&RoleArn=x"),
        "exactly",
    ),
    ("missing server id", _header("X-Kmsd-Server-Id", None), "X-Kmsd-Server-Id"),
    ("unsigned server id", _unsign_server_id, "covered by the signature"),
    ("other server id", _header("X-Kmsd-Server-Id", "another-kmsd"), "does not match"),
    ("stale date", _stale, "stale"),
    ("foreign host", _set("iam_request_url", b"http://sts.evil.example/"), "STS endpoint"),
    ("method", lambda b: {**b, "iam_http_request_method": "GET"}, "POST"),
]


@pytest.mark.parametrize(("case", "tamper", "phrase"), TAMPERINGS, ids=[t[0] for t in TAMPERINGS])
async def test_tampered_login_is_refused(
    client: TestClient[web.Request, web.Application],
    admin: Identity,
    moto_endpoint: str,
    db: asyncpg.Connection,
    case: str,
    tamper: Callable[[Body], Body],
    phrase: str,
) -> None:
    body = tamper(login_body(admin, moto_endpoint))
    async with client.post("/v1/auth/aws/login", json=body) as resp:
        problem = await resp.json(content_type=None)
        assert resp.status == 401, problem
        assert resp.content_type == "application/problem+json"
    assert phrase in problem["detail"], problem
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0


async def test_request_signed_for_another_endpoint_is_never_forwarded(
    client: TestClient[web.Request, web.Application], admin: Identity, moto_endpoint: str
) -> None:
    # Signed for a live STS elsewhere: kmsd must refuse before sending anything anywhere.
    elsewhere = f"http://127.0.0.1:{free_port()}"
    async with client.post("/v1/auth/aws/login", json=login_body(admin, elsewhere)) as resp:
        assert resp.status == 401  # a 502 would mean kmsd tried to reach that host


async def test_genuine_login_issues_a_token(
    client: TestClient[web.Request, web.Application],
    admin: Identity,
    moto_endpoint: str,
    db: asyncpg.Connection,
) -> None:
    async with client.post("/v1/auth/aws/login", json=login_body(admin, moto_endpoint)) as resp:
        doc = await resp.json()
        assert resp.status == 200, doc
    assert doc["principal"] == admin.arn
    expires = datetime.fromisoformat(doc["expires_at"])
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)
    # Only a hash of the token is stored.
    stored = await db.fetchval("SELECT token_hash FROM sessions")
    assert doc["token"].encode() not in bytes(stored)
    api = Api(client, doc["token"])
    assert (await api.ok("GET", "/v1/auth/whoami"))["admin"] is True


async def test_assumed_role_maps_to_role(
    client: TestClient[web.Request, web.Application], moto_endpoint: str
) -> None:
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name=REGION)
    role = iam.create_role(RoleName="payments-host", AssumeRolePolicyDocument="{}")["Role"]
    sts = boto3.client("sts", endpoint_url=moto_endpoint, region_name=REGION)
    creds = sts.assume_role(RoleArn=role["Arn"], RoleSessionName="i-0abc")["Credentials"]
    who = Identity("", creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
    api = await sign_in(client, who, moto_endpoint)
    doc = await api.ok("GET", "/v1/auth/whoami")
    assert doc["principal"] == "arn:aws:iam::123456789012:role/payments-host"
    assert doc["caller_arn"] == "arn:aws:sts::123456789012:assumed-role/payments-host/i-0abc"
    assert doc["admin"] is False


@pytest.mark.parametrize(
    "body",
    [
        {},
        {
            "iam_http_request_method": "POST",
            "iam_request_url": "%%%",
            "iam_request_body": "",
            "iam_request_headers": "",
        },
        {
            "iam_http_request_method": "POST",
            "iam_request_url": "",
            "iam_request_body": "",
            "iam_request_headers": base64.b64encode(b"[1]").decode(),
        },
    ],
)
async def test_malformed_login_body_is_400(
    client: TestClient[web.Request, web.Application], body: dict[str, Any]
) -> None:
    async with client.post("/v1/auth/aws/login", json=body) as resp:
        assert resp.status == 400


async def test_calls_without_valid_token_are_401(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str
) -> None:
    client = await make_client()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}):
        async with client.get("/v1/effective/prod/app", headers=headers) as resp:
            assert resp.status == 401
            assert resp.content_type == "application/problem+json"
    # A token past its lifetime is refused like an unknown one.
    short = await make_client(token_ttl_s=0)
    api = await sign_in(short, admin, moto_endpoint)
    status, problem = await api.call("GET", "/v1/auth/whoami")
    assert status == 401
    assert "expired" in problem["detail"]


async def test_public_routes(client: TestClient[web.Request, web.Application]) -> None:
    async with client.get("/healthz") as resp:
        assert resp.status == 200
    async with client.get("/metrics") as resp:
        text = await resp.text()
        assert resp.status == 200
    assert "kmsd_http_requests_total" in text
