"""Writing values: to SM only, metadata to PostgreSQL, failures leave nothing behind."""

from __future__ import annotations

import base64
import json
import os
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from kmsd.aws.clients import ForbiddenOperation, aws_client
from kmsd.aws.sm import secrets_writer
from kmsd.config import Settings
from kmsd.domain.names import NodePath
from kmsd.services import writes
from kmsd.services.reconcile import reconcile
from tests.conftest import free_port
from tests.integration.conftest import Api, ClientFactory, sign_in, snapshot

# A value that must never show up anywhere but SM.
CANARY = "canary-" + uuid.uuid4().hex


async def _app_node(api: Api) -> None:
    await api.ok("PUT", "/v1/nodes/prod/payments/eu?parents=true")


async def test_json_round_trip_through_sm(api: Api, sm_client: Any, db: asyncpg.Connection) -> None:
    await _app_node(api)
    doc = await api.put_json(
        "prod/payments/db",
        {"user": "pay", "password": CANARY},
        description="payments DB",
        tags={"team": "pay"},
    )
    assert doc["created"] is True
    got = sm_client.get_secret_value(SecretId=doc["sm_arn"], VersionId=doc["version_id"])
    assert json.loads(got["SecretString"]) == {"user": "pay", "password": CANARY}
    meta = await api.ok("GET", "/v1/secrets/prod/payments/db")
    assert (meta["kind"], meta["description"], meta["tags"]) == (
        "json",
        "payments DB",
        {"team": "pay"},
    )
    assert [v["stage"] for v in meta["versions"]] == ["current"]
    assert CANARY not in json.dumps(meta)


async def test_binary_round_trip_through_sm(api: Api, sm_client: Any) -> None:
    await _app_node(api)
    cert = b"-----BEGIN CERTIFICATE-----\n" + os.urandom(3000) + b"\n-----END CERTIFICATE-----\n"
    doc = await api.ok(
        "PUT",
        "/v1/secrets/prod/payments/eu/tls",
        json={"kind": "binary", "value_b64": base64.b64encode(cert).decode()},
    )
    got = sm_client.get_secret_value(SecretId=doc["sm_arn"], VersionId=doc["version_id"])
    assert got["SecretBinary"] == cert
    eff = await api.effective("prod/payments/eu")
    assert [(s["name"], s["kind"]) for s in eff["secrets"]] == [("tls", "binary")]


async def test_new_versions_move_stages(api: Api, sm_client: Any) -> None:
    await _app_node(api)
    v1 = await api.put_json("prod/payments/db", {"p": "1"})
    v2 = await api.put_json("prod/payments/db", {"p": "2"})
    v3 = await api.put_json("prod/payments/db", {"p": "3"})
    assert (v2["created"], v2["sm_arn"]) == (False, v1["sm_arn"])
    meta = await api.ok("GET", "/v1/secrets/prod/payments/db")
    stages = {v["version_id"]: v["stage"] for v in meta["versions"]}
    assert stages == {
        v3["version_id"]: "current",
        v2["version_id"]: "previous",
        v1["version_id"]: "deprecated",
    }
    eff = await api.effective("prod/payments")
    assert [(v["version_id"], v["stage"]) for v in eff["secrets"][0]["versions"]] == [
        (v3["version_id"], "current"),
        (v2["version_id"], "previous"),
    ]
    for v, want in ((v1, "1"), (v2, "2"), (v3, "3")):
        got = sm_client.get_secret_value(SecretId=v1["sm_arn"], VersionId=v["version_id"])
        assert json.loads(got["SecretString"]) == {"p": want}


BAD_BODIES = [
    ({"kind": "json", "value": "not an object"}, 400, "JSON object"),
    ({"kind": "json", "value": {}}, 400, "at least one key"),
    ({"kind": "json"}, 400, "JSON object"),
    ({"kind": "datakey", "value": {"a": "b"}}, 400, "kind must be"),
    ({"kind": "binary", "value_b64": "***"}, 400, "base64"),
    ({"kind": "binary", "value_b64": ""}, 400, "empty"),
    ({"kind": "binary"}, 400, "value_b64"),
    ({"kind": "json", "value": {"a": "b"}, "tags": {"k": 1}}, 400, "tag"),
    ({"kind": "json", "value": {"a": "b"}, "tags": ["x"]}, 400, "tags"),
    ({"kind": "json", "value": {"a": "b"}, "expires_at": "2001-01-01T00:00:00Z"}, 400, "future"),
    ({"kind": "json", "value": {"a": "b"}, "expires_at": "tomorrow"}, 400, "ISO 8601"),
    ({"kind": "json", "value": {"a": "b"}, "expires_at": "2099-01-01T00:00:00"}, 400, "zone"),
    # year 10000 in UTC: once accepted, it reached SM and broke every later reconcile pass
    (
        {"kind": "json", "value": {"a": "b"}, "expires_at": "9999-12-31T23:59:59-14:00"},
        400,
        "range",
    ),
    ({"kind": "json", "value": {"a": "b"}, "expires_at": "9000-01-01T00:00:00Z"}, 400, "100 years"),
    ({"kind": "json", "value": {"a": "b"}, "description": 5}, 400, "description"),
    ({"kind": "json", "value": {"blob": "x" * 70000}}, 413, "65536"),
    ({"kind": "binary", "value_b64": base64.b64encode(b"x" * 65537).decode()}, 413, "65536"),
]


@pytest.mark.parametrize(("body", "status", "phrase"), BAD_BODIES)
async def test_bad_values_are_refused_and_leave_nothing(
    api: Api,
    db: asyncpg.Connection,
    sm_client: Any,
    settings: Settings,
    body: dict[str, Any],
    status: int,
    phrase: str,
) -> None:
    await _app_node(api)
    before = await snapshot(db)
    got, problem = await api.call("PUT", "/v1/secrets/prod/payments/db", json=body)
    assert got == status, problem
    assert phrase in problem["detail"]
    assert await snapshot(db) == before
    names = [s["Name"] for s in sm_client.list_secrets()["SecretList"]]
    assert settings.sm_prefix + "prod/payments/db" not in names


@pytest.mark.parametrize(
    ("ref", "status"),
    [
        ("prod/payments/Bad", 400),
        ("prod/payments/db/", 400),
        ("prod/db", 400),  # a namespace holds no secrets
        ("prod/nowhere/db", 404),
        ("db", 400),
    ],
)
async def test_bad_targets(api: Api, db: asyncpg.Connection, ref: str, status: int) -> None:
    await _app_node(api)
    before = await snapshot(db)
    got, problem = await api.call("PUT", f"/v1/secrets/{ref}", json={"value": {"a": "b"}})
    assert got == status, problem
    assert await snapshot(db) == before


async def test_kind_cannot_change(api: Api, db: asyncpg.Connection) -> None:
    await _app_node(api)
    await api.put_json("prod/payments/db", {"a": "b"})
    before = await snapshot(db)
    status, problem = await api.call(
        "PUT", "/v1/secrets/prod/payments/db", json={"kind": "binary", "value_b64": "eA=="}
    )
    assert status == 409, problem
    assert await snapshot(db) == before


async def test_not_json_and_wrong_media_type(api: Api) -> None:
    await _app_node(api)
    status, problem = await api.call(
        "PUT",
        "/v1/secrets/prod/payments/db",
        data=b"{nope",
        headers={"Content-Type": "application/json"},
    )
    assert (status, problem["type"].rsplit("/", 1)[1]) == (400, "invalid-input")
    status, _ = await api.call(
        "PUT",
        "/v1/secrets/prod/payments/db",
        data=b"x",
        headers={"Content-Type": "text/plain"},
    )
    assert status == 415


async def test_aws_failure_leaves_no_metadata(
    make_client: ClientFactory, admin: Any, moto_endpoint: str, db: asyncpg.Connection
) -> None:
    # SM unreachable (a closed port), STS still fine: the write fails upstream.
    client = await make_client(aws_endpoint_url=f"http://127.0.0.1:{free_port()}")
    api = await sign_in(client, admin, moto_endpoint)
    await _app_node(api)
    before = await snapshot(db)
    status, problem = await api.call(
        "PUT", "/v1/secrets/prod/payments/db", json={"value": {"password": CANARY}}
    )
    assert status == 502, problem
    assert CANARY not in json.dumps(problem)
    assert await snapshot(db) == before


async def test_value_never_reaches_logs_db_or_answers(api: Api, db: asyncpg.Connection) -> None:
    await _app_node(api)
    with capture_logs() as logs:
        doc = await api.put_json("prod/payments/db", {"password": CANARY})
        eff = await api.effective("prod/payments")
    assert logs, "the request should have been logged"
    assert CANARY not in repr(logs)
    assert CANARY not in json.dumps(doc) + json.dumps(eff)
    dump = await db.fetchval(
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM secrets) t"
    ) + await db.fetchval("SELECT coalesce(string_agg(t::text, ' '), '') FROM secret_versions t")
    assert CANARY not in dump


async def test_reconcile_records_a_write_whose_metadata_was_lost(
    api: Api, settings: Settings, sm_client: Any, db: asyncpg.Connection
) -> None:
    """kmsd died between the SM write and the metadata commit: the outbox finishes it."""
    await _app_node(api)
    path = NodePath.parse("prod/payments")
    sm_name = writes.sm_name_for(settings.sm_prefix, path, "db")
    version_id = str(uuid.uuid4())
    intent = {
        "path": "prod/payments",
        "name": "db",
        "kind": "json",
        "sm_name": sm_name,
        "created_by": "arn:aws:iam::123456789012:user/ops-admin",
        "description": "",
        "tags": {},
        "expires_at": None,
    }
    await db.execute(
        "INSERT INTO sm_outbox (op, sm_name, version_id, intent, created_at)"
        " VALUES ('put', $1, $2, $3::jsonb, now() - interval '10 minutes')",
        sm_name,
        version_id,
        json.dumps(intent),
    )
    # Step 2 happened (the value reached SM), step 3 never did.
    sm_client.create_secret(Name=sm_name, SecretString='{"p": "1"}', ClientRequestToken=version_id)
    # A second intent whose SM write never happened must simply be dropped.
    await db.execute(
        "INSERT INTO sm_outbox (op, sm_name, version_id, intent, created_at)"
        " VALUES ('put', $1, $2, $3::jsonb, now() - interval '10 minutes')",
        sm_name,
        str(uuid.uuid4()),
        json.dumps(intent),
    )
    async with secrets_writer(settings) as sm:
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
        try:
            counts = await reconcile(pool, sm, timedelta(minutes=2))
        finally:
            await pool.close()
    assert (counts["current"], counts["drop"]) == (1, 1)
    assert await db.fetchval("SELECT count(*) FROM sm_outbox") == 0
    eff = await api.effective("prod/payments")
    (only,) = eff["secrets"][0]["versions"]
    assert (only["version_id"], only["stage"]) == (version_id, "current")


async def test_reconcile_leaves_young_intents_alone(
    api: Api, settings: Settings, db: asyncpg.Connection
) -> None:
    await _app_node(api)
    await db.execute("INSERT INTO sm_outbox (op, sm_name, version_id) VALUES ('put', 'x/y', 'v')")
    async with secrets_writer(settings) as sm:
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
        try:
            counts = await reconcile(pool, sm, timedelta(minutes=2))
        finally:
            await pool.close()
    assert sum(counts.values()) == 0
    assert await db.fetchval("SELECT count(*) FROM sm_outbox") == 1


@pytest.mark.parametrize(
    ("service", "call", "kwargs"),
    [
        ("secretsmanager", "get_secret_value", {"SecretId": "anything"}),
        ("secretsmanager", "batch_get_secret_value", {"SecretIdList": ["anything"]}),
        ("secretsmanager", "list_secrets", {}),
        ("kms", "decrypt", {"CiphertextBlob": b"x" * 32}),
        ("kms", "generate_data_key", {"KeyId": "alias/x", "KeySpec": "AES_256"}),
        ("kms", "re_encrypt", {"CiphertextBlob": b"x" * 32, "DestinationKeyId": "alias/x"}),
        (
            "sts",
            "assume_role",
            {"RoleArn": "arn:aws:iam::123456789012:role/x", "RoleSessionName": "session"},
        ),
    ],
)
async def test_kmsd_clients_refuse_everything_outside_the_allowlist(
    settings: Settings, service: str, call: str, kwargs: dict[str, Any]
) -> None:
    async with aws_client(service, settings) as client:
        with pytest.raises(ForbiddenOperation):
            await getattr(client, call)(**kwargs)


async def test_allowed_operations_still_work(settings: Settings, sm_client: Any) -> None:
    name = settings.sm_prefix + "guard-check"
    sm_client.create_secret(Name=name, SecretString='{"a": "b"}')
    async with aws_client("secretsmanager", settings) as client:
        assert (await client.describe_secret(SecretId=name))["Name"] == name


async def test_no_client_for_services_kmsd_does_not_use(settings: Settings) -> None:
    with pytest.raises(ForbiddenOperation):
        async with aws_client("s3", settings):
            pass


@pytest.fixture
async def failing_aws(aiohttp_server: Any) -> str:
    """An endpoint that answers every AWS call with a 500 (an outage mid-request)."""
    from aiohttp import web

    async def fail(_: web.Request) -> web.Response:
        return web.json_response({"__type": "InternalFailure", "message": "x"}, status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fail)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


async def test_an_ambiguous_aws_failure_keeps_the_intent_for_the_reconciler(
    make_client: ClientFactory,
    admin: Any,
    moto_endpoint: str,
    db: asyncpg.Connection,
    failing_aws: str,
    settings: Settings,
) -> None:
    client = await make_client(aws_endpoint_url=failing_aws)
    api = await sign_in(client, admin, moto_endpoint)
    await _app_node(api)
    status, problem = await api.call(
        "PUT", "/v1/secrets/prod/payments/db", json={"value": {"password": CANARY}}
    )
    assert status == 502, problem
    assert problem["ambiguous"] is True
    assert await db.fetchval("SELECT count(*) FROM secrets") == 0  # no metadata
    (intent,) = await db.fetch("SELECT version_id FROM sm_outbox WHERE op = 'put'")
    # The reconciler asks the real SM: the version is not there, so the intent is dropped.
    async with secrets_writer(settings) as sm:
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
        try:
            counts = await reconcile(pool, sm, timedelta(0))
        finally:
            await pool.close()
    assert counts["drop"] == 1
    assert await db.fetchval("SELECT count(*) FROM sm_outbox") == 0
    assert intent["version_id"]


async def test_hand_made_secrets_get_the_profile_default_expiry(api: Api) -> None:
    from datetime import UTC, datetime

    await _app_node(api)
    await api.put_json("prod/payments/db", {"a": "b"})
    meta = await api.ok("GET", "/v1/secrets/prod/payments/db")
    expires = datetime.fromisoformat(meta["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=365))) < timedelta(minutes=1)
    assert meta["generated"] is None
