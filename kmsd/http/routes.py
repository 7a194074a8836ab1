"""Routes for the tree, secret metadata and values in, effective sets out."""

from __future__ import annotations

import asyncio
import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from kmsd.db import audit as audit_db
from kmsd.db import store
from kmsd.domain.access import ROOT
from kmsd.domain.inputs import (
    SM_MAX_VALUE_BYTES,
    check_value_size,
    parse_expiry,
    parse_int,
    parse_time,
)
from kmsd.domain.names import NodePath, check_segment
from kmsd.domain.tree import KINDS, effective_document
from kmsd.errors import InvalidInput
from kmsd.http import access, iam, openapi
from kmsd.http.access import authorize
from kmsd.http.auth import login
from kmsd.http.common import flag, json_body, json_response
from kmsd.http.console import setup_console_routes
from kmsd.http.outbox import setup_outbox_routes
from kmsd.http.reads import audit_doc, describe_secret, search_audit
from kmsd.http.rotations import setup_rotation_routes
from kmsd.http.sharing import setup_sharing_routes
from kmsd.http.watch import adoption, forget_instance, watch
from kmsd.keys import AUDIT, CLOCK, KMS, METRICS, POOL, PROFILE, SETTINGS, SM, WAKER
from kmsd.services import datakeys, writes
from kmsd.services.keygen import generate
from kmsd.services.scheduler import EXPIRING_HAND_MADE

GENERATE_FIELDS = frozenset({"use", "algorithm", "length", "lifetime_days", "description"})
PUT_SECRET_FIELDS = frozenset({"kind", "value", "value_b64", "description", "tags", "expires_at"})
# Secrets Manager refuses SecretString/SecretBinary over 65,536 bytes.
MAX_TAGS = 50


def _split_secret(ref: str) -> tuple[NodePath, str]:
    path, _, name = ref.rpartition("/")
    if not path:
        raise InvalidInput("expected PATH/NAME: a node path, then the secret name")
    return NodePath.parse(path), check_segment(name, "secret name")


async def put_node(request: web.Request) -> web.Response:
    path = NodePath.parse(request.match_info["path"])
    parents = flag(request, "parents")
    who = await authorize(request, "edit", path.segments[0] if parents else str(path))
    await authorize(request, "edit", str(path))
    async with request.app[POOL].acquire() as conn, conn.transaction():
        created = await store.create_node(conn, path, who.arn, parents=parents)
    return json_response({"path": str(path), "created": created}, status=201 if created else 200)


async def get_node(request: web.Request) -> web.Response:
    path = NodePath.parse(request.match_info["path"])
    await authorize(request, "view", str(path))
    async with request.app[POOL].acquire() as conn:
        return json_response(await store.describe_node(conn, path))


async def delete_node(request: web.Request) -> web.Response:
    path = NodePath.parse(request.match_info["path"])
    await authorize(request, "edit", str(path))
    sm_names = await asyncio.shield(
        writes.delete_node(
            request.app[POOL], request.app[SM], path, recursive=flag(request, "recursive")
        )
    )
    return json_response({"path": str(path), "deleted": True, "secrets_deleted": len(sm_names)})


async def list_namespaces(request: web.Request) -> web.Response:
    await authorize(request, "view", ROOT)
    rows = await request.app[POOL].fetch("SELECT path FROM nodes WHERE depth = 1 ORDER BY path")
    return json_response({"namespaces": [r["path"] for r in rows]})


async def put_secret(request: web.Request) -> web.Response:
    path, name = _split_secret(request.match_info["ref"])
    who = await authorize(request, "edit", str(path))
    doc = await json_body(request, allowed=PUT_SECRET_FIELDS, opaque={"value"})
    kind = doc.get("kind", "json")
    if kind not in KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(KINDS)}")
    value = _value_of(kind, doc)
    settings = request.app[SETTINGS]
    # Shielded: a client hanging up must not cut a write between SM and PostgreSQL.
    result = await asyncio.shield(
        writes.put_secret(
            request.app[POOL],
            request.app[SM],
            settings.sm_prefix,
            writes.PutRequest(
                path=path,
                name=name,
                kind=kind,
                value=value,
                created_by=who.arn,
                description=_description(doc),
                tags=_tags(doc),
                expires_at=_expires_at(doc)
                or request.app[CLOCK].now()
                + timedelta(days=request.app[PROFILE].hand_made_lifetime_days),
            ),
        )
    )
    return json_response(result, status=201 if result["created"] else 200)


async def generate_secret(request: web.Request) -> web.Response:
    """Generate a key by the security profile, store it in SM, keep only metadata."""
    path, name = _split_secret(request.match_info["ref"])
    who = await authorize(request, "edit", str(path))
    doc = await json_body(request, allowed=GENERATE_FIELDS)
    size = doc.get("length")
    lifetime = doc.get("lifetime_days")
    for field, value in (("length", size), ("lifetime_days", lifetime)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidInput(f"{field!r} must be an integer")
    algorithm = doc.get("algorithm")
    if algorithm is not None and not isinstance(algorithm, str):
        raise InvalidInput("'algorithm' must be a string")
    spec = request.app[PROFILE].check(str(doc.get("use", "")), algorithm, size, lifetime)
    now = request.app[CLOCK].now()
    expires_at = now + timedelta(days=spec.lifetime_days)
    # RSA generation takes tens of milliseconds to seconds: off the event loop.
    key = await asyncio.get_running_loop().run_in_executor(None, generate, spec, now)
    put = writes.PutRequest(
        path=path,
        name=name,
        kind="json",
        value=orjson.dumps(key.document, option=orjson.OPT_SORT_KEYS).decode(),
        created_by=who.arn,
        description=_description(doc),
        expires_at=expires_at,
        spec=spec.as_dict(),
        public_key=key.public_key_pem,
    )
    del key  # from here on only the write request holds the value, until SM has it
    result = await asyncio.shield(
        writes.put_secret(request.app[POOL], request.app[SM], request.app[SETTINGS].sm_prefix, put)
    )
    return json_response(
        {**result, "generated": spec.as_dict(), "expires_at": expires_at.isoformat()},
        status=201 if result["created"] else 200,
    )


async def create_datakey(request: web.Request) -> web.Response:
    """Create a KMS data key secret, or add its next period's key."""
    path, name = _split_secret(request.match_info["ref"])
    who = await authorize(request, "edit", str(path))
    doc = await json_body(request, allowed={"cmk", "period_days"})
    cmk = doc.get("cmk")
    if not isinstance(cmk, str) or not 0 < len(cmk) <= 2048:
        raise InvalidInput("'cmk' must be a KMS key id, ARN or alias")
    period = doc.get("period_days", datakeys.DEFAULT_PERIOD_DAYS)
    if isinstance(period, bool) or not isinstance(period, int):
        raise InvalidInput("'period_days' must be an integer")
    result = await asyncio.shield(
        datakeys.new_data_key(
            request.app[POOL],
            request.app[KMS],
            path,
            name,
            cmk=cmk,
            period_days=period,
            created_by=who.arn,
            now=request.app[CLOCK].now(),
        )
    )
    return json_response(result, status=201 if result["created"] else 200)


async def get_secret(request: web.Request) -> web.Response:
    path, name = _split_secret(request.match_info["ref"])
    await authorize(request, "view", str(path))
    return json_response(await describe_secret(request.app[POOL], path, name))


async def delete_secret(request: web.Request) -> web.Response:
    path, name = _split_secret(request.match_info["ref"])
    await authorize(request, "edit", str(path))
    await asyncio.shield(writes.delete_secret(request.app[POOL], request.app[SM], path, name))
    return json_response({"path": str(path), "name": name, "deleted": True})


async def effective(request: web.Request) -> web.Response:
    path = NodePath.parse(request.match_info["path"])
    await authorize(request, "read", str(path))
    async with (
        request.app[POOL].acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        version, chain = await store.load_chain(conn, path)
    return json_response(effective_document(str(path), version, chain))


async def audit_list(request: web.Request) -> web.Response:
    q = request.query
    path = q.get("path")
    if path is not None:
        path = str(NodePath.parse(path))
    await authorize(request, "view" if path else "admin", path or ROOT)
    limit = parse_int(q.get("limit", "100"), "limit", low=1, high=10000)
    rows = await search_audit(
        request.app[POOL],
        principal=q.get("principal"),
        path=path,
        action=q.get("action"),
        since=_time_param(q.get("since"), "since"),
        until=_time_param(q.get("until"), "until"),
        outcome=q.get("outcome"),
        limit=limit,
    )
    return json_response({"rows": [audit_doc(r) for r in rows]})


def _time_param(raw: str | None, name: str) -> datetime | None:
    return None if raw is None else parse_time(raw, name)


async def audit_verify(request: web.Request) -> web.Response:
    await authorize(request, "admin", ROOT)
    checked, broken = await audit_db.verify(request.app[POOL])
    return json_response({"ok": broken is None, "checked": checked, "first_broken_seq": broken})


async def expiring(request: web.Request) -> web.Response:
    """Hand-made secrets expiring within ?days= (default 30): they cannot rotate themselves."""
    await authorize(request, "view", ROOT)
    days = parse_int(request.query.get("days", "30"), "days", low=0, high=3650)
    horizon = request.app[CLOCK].now() + timedelta(days=days)
    rows = await request.app[POOL].fetch(EXPIRING_HAND_MADE, horizon)
    return json_response(
        {
            "days": days,
            "secrets": [
                {
                    "path": r["path"],
                    "name": r["name"],
                    "kind": r["kind"],
                    "expires_at": r["expires_at"].isoformat(),
                }
                for r in rows
            ],
        }
    )


# A health check that hangs is no answer: a frozen database is reported as down in time.
HEALTH_DB_TIMEOUT_S = 2.0


async def healthz(request: web.Request) -> web.Response:
    """Healthy only if PostgreSQL answers, the audit writer runs and LISTEN is connected."""
    try:
        async with asyncio.timeout(HEALTH_DB_TIMEOUT_S):
            await request.app[POOL].fetchval("SELECT 1")
        database = True
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        database = False
    checks = {
        "database": database,
        "audit_writer": request.app[AUDIT].running,
        "listen": request.app[WAKER].connected.is_set(),
    }
    healthy = all(checks.values())
    return json_response(
        {"status": "ok" if healthy else "degraded", **checks}, status=200 if healthy else 503
    )


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


def _value_of(kind: str, doc: dict[str, Any]) -> str | bytes:
    """Extract the value to send to SM, enforcing SM's size limit; never echo it."""
    if kind == "json":
        if "value" not in doc or not isinstance(doc["value"], dict):
            raise InvalidInput("a json secret needs 'value': a JSON object of key/value pairs")
        if not doc["value"]:
            raise InvalidInput("a json secret needs at least one key")
        encoded = orjson.dumps(doc["value"], option=orjson.OPT_SORT_KEYS)
        check_value_size(len(encoded))
        return encoded.decode()
    raw = doc.get("value_b64")
    if not isinstance(raw, str):
        raise InvalidInput("a binary secret needs 'value_b64': the file's bytes in base64")
    if len(raw) > (SM_MAX_VALUE_BYTES * 4) // 3 + 8:
        check_value_size(len(raw) * 3 // 4)
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("'value_b64' is not valid base64") from None
    if not data:
        raise InvalidInput("a binary secret cannot be empty")
    check_value_size(len(data))
    return data


def _description(doc: dict[str, Any]) -> str:
    text = doc.get("description", "")
    if not isinstance(text, str) or len(text) > 2048:
        raise InvalidInput("description must be a string of at most 2048 characters")
    return text


def _tags(doc: dict[str, Any]) -> dict[str, str]:
    tags = doc.get("tags", {})
    if not isinstance(tags, dict) or len(tags) > MAX_TAGS:
        raise InvalidInput(f"tags must be an object of at most {MAX_TAGS} string pairs")
    for key, val in tags.items():
        if not (isinstance(val, str) and 0 < len(key) <= 128 and len(val) <= 256):
            raise InvalidInput("tag keys are 1-128 characters and values strings of at most 256")
    return tags


def _expires_at(doc: dict[str, Any]) -> datetime | None:
    raw = doc.get("expires_at")
    return None if raw is None else parse_expiry(raw, now=datetime.now(UTC))


def setup_routes(app: web.Application) -> None:
    """Register every route; ``{path}`` and ``{ref}`` span slashes."""
    app.router.add_post("/v1/auth/aws/login", login)
    app.router.add_get("/v1/auth/whoami", access.whoami)
    app.router.add_get("/v1/bindings", access.list_bindings)
    app.router.add_post("/v1/bindings", access.grant)
    app.router.add_delete("/v1/bindings/{id}", access.revoke)
    app.router.add_get("/v1/nodes", list_namespaces)
    app.router.add_put("/v1/nodes/{path:.+}", put_node)
    app.router.add_get("/v1/nodes/{path:.+}", get_node)
    app.router.add_delete("/v1/nodes/{path:.+}", delete_node)
    app.router.add_put("/v1/secrets/{ref:.+}", put_secret)
    app.router.add_get("/v1/secrets/{ref:.+}", get_secret)
    app.router.add_post("/v1/generate/{ref:.+}", generate_secret)
    app.router.add_post("/v1/datakeys/{ref:.+}", create_datakey)
    app.router.add_delete("/v1/secrets/{ref:.+}", delete_secret)
    app.router.add_get("/v1/effective/{path:.+}", effective)
    app.router.add_post("/v1/watch", watch)
    app.router.add_get("/v1/adoption/{path:.+}", adoption)
    app.router.add_delete("/v1/adoption/{path:.+}", forget_instance)
    app.router.add_get("/v1/iam-policy/app/{path:.+}", iam.app)
    app.router.add_get("/v1/iam-policy/drift/{path:.+}", iam.drift)
    app.router.add_get("/v1/iam-policy/server", iam.server)
    app.router.add_get("/v1/audit", audit_list)
    app.router.add_post("/v1/audit/verify", audit_verify)
    app.router.add_get("/v1/expiring", expiring)
    setup_sharing_routes(app)
    setup_outbox_routes(app)
    setup_rotation_routes(app)
    setup_console_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/openapi.json", openapi.openapi)
