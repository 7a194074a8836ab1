"""Rotation API: start, list, describe, operator commands; application webhooks."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

import orjson
from aiohttp import web

from kmsd.domain import outbound
from kmsd.domain import rotation as machine
from kmsd.domain.access import ROOT
from kmsd.domain.inputs import SM_MAX_VALUE_BYTES, check_value_size, parse_id, parse_int
from kmsd.domain.names import NodePath, check_segment
from kmsd.errors import Forbidden, InvalidInput, NotFound
from kmsd.http.access import authorize
from kmsd.http.common import AUDIT_DENIED, AUDIT_TARGET, flag, json_body, json_response
from kmsd.keys import POOL, ROTATIONS, SETTINGS, WEBHOOK_KEYS
from kmsd.services import rotation as rotations
from kmsd.services import webhooks

_DROP_UNDELIVERED = "DELETE FROM webhook_deliveries WHERE app_path = $1 AND delivered_at IS NULL"
# The row keeps what derives the key (kmsd.services.webhook_keys), never the key; a hook set
# again drops the stored key of a hook from before derived keys.
_SET_WEBHOOK = """
INSERT INTO webhooks (app_path, url, mac_key_id, mac_salt, created_by) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (app_path) DO UPDATE
SET url = EXCLUDED.url, hmac_key = NULL, mac_key_id = EXCLUDED.mac_key_id,
    mac_salt = EXCLUDED.mac_salt, created_by = EXCLUDED.created_by, created_at = now()
"""
START_FIELDS = frozenset(
    {"path", "name", "value", "value_b64", "generate", "mode", "gate_timeout", "leaked"}
)


def _rotation_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    rotation_id = parse_id(raw)
    if rotation_id is None:  # bigint ids; anything else names no rotation
        raise NotFound(f"rotation {raw[:40]!r} does not exist")
    return rotation_id


async def _secret_path(request: web.Request, rotation_id: int) -> str:
    row = await request.app[POOL].fetchrow(
        "SELECT n.path, s.name FROM rotations r JOIN secrets s ON s.id = r.secret_id "
        "JOIN nodes n ON n.id = s.node_id WHERE r.id = $1",
        rotation_id,
    )
    if row is None:
        raise NotFound(f"rotation {rotation_id} does not exist")
    # The secret's ref first, so `audit list --path` finds the rotation's calls.
    request[AUDIT_TARGET] = f"{row['path']}/{row['name']} rotation {rotation_id}"
    try:
        # Who may not even read the application learns nothing, not even that the id exists.
        await authorize(request, "read", str(row["path"]))
    except Forbidden:
        request[AUDIT_DENIED] = True
        raise NotFound(f"rotation {rotation_id} does not exist") from None
    return str(row["path"])


async def start(request: web.Request) -> web.Response:
    doc = await json_body(request, allowed=START_FIELDS, opaque={"value"})
    raw_path, name = doc.get("path"), doc.get("name")
    if not isinstance(raw_path, str) or not isinstance(name, str):
        raise InvalidInput("'path' and 'name' (strings) name the secret to rotate")
    path = NodePath.parse(raw_path)
    check_segment(name, "secret name")
    request[AUDIT_TARGET] = f"{path}/{name}"
    who = await authorize(request, "rotate", str(path))
    value = _value(doc)
    if value is not None:
        # A value the caller chose is a write: rotate alone only rotates to a value kmsd makes.
        await authorize(request, "edit", str(path))
    leaked = doc.get("leaked", False)
    if not isinstance(leaked, bool):
        raise InvalidInput("'leaked' must be true or false")
    mode = doc.get("mode", "auto" if leaked else "manual")
    default_timeout = machine.LEAKED_GATE_TIMEOUT if leaked else machine.DEFAULT_GATE_TIMEOUT
    raw_timeout = doc.get("gate_timeout")
    if raw_timeout is not None and not isinstance(raw_timeout, str | int):
        raise InvalidInput("'gate_timeout' is a duration such as 90s, 15m or 2h")
    timeout = (
        machine.parse_duration(str(raw_timeout)) if raw_timeout is not None else default_timeout
    )
    # Shielded like every write: a client hanging up must not cut it between SM and PostgreSQL.
    result = await asyncio.shield(
        request.app[ROTATIONS].start(
            rotations.StartRequest(
                path=path,
                name=name,
                value=value,
                mode=str(mode),
                gate_timeout=timeout,
                leaked=leaked,
                started_by=who.arn,
            )
        )
    )
    return json_response(result, status=201)


def _value(doc: dict[str, Any]) -> str | bytes | None:
    """The new value (JSON object or base64 bytes), or None to generate it by the spec."""
    given = [k for k in ("value", "value_b64") if k in doc]
    generate = doc.get("generate", False)
    if not isinstance(generate, bool):
        raise InvalidInput("'generate' must be true or false")
    if generate == bool(given) or len(given) > 1:
        raise InvalidInput("give exactly one of 'value' (JSON object), 'value_b64' or 'generate'")
    if generate:
        return None
    if "value" in doc:
        if not isinstance(doc["value"], dict):
            raise InvalidInput("'value' must be a JSON object")
        encoded = orjson.dumps(doc["value"])
        check_value_size(len(encoded))
        return encoded.decode()
    raw = doc["value_b64"]
    if not isinstance(raw, str):
        raise InvalidInput("'value_b64' must be a string: the new value's bytes in base64")
    if len(raw) > (SM_MAX_VALUE_BYTES * 4) // 3 + 8:  # refused before decoding a huge body
        check_value_size(len(raw) * 3 // 4)
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):  # ValueError: text that is not ASCII
        raise InvalidInput("'value_b64' is not valid base64") from None
    check_value_size(len(data))
    return data


async def list_rotations(request: web.Request) -> web.Response:
    path = request.query.get("path")
    if path is not None:
        path = str(NodePath.parse(path))
    await authorize(request, "view", path or ROOT)
    active = flag(request, "active")
    limit = parse_int(request.query.get("limit", "100"), "limit", low=1, high=1000)
    found = await request.app[ROTATIONS].list(path, active_only=active, limit=limit)
    return json_response({"rotations": list(found)})


async def describe(request: web.Request) -> web.Response:
    rotation_id = _rotation_id(request)
    await authorize(request, "view", await _secret_path(request, rotation_id))
    return json_response(await request.app[ROTATIONS].describe(rotation_id))


async def act(request: web.Request) -> web.Response:
    rotation_id = _rotation_id(request)
    verb = request.match_info["verb"]
    if verb not in machine.COMMANDS:
        raise NotFound(f"no such rotation command {verb!r}; one of {', '.join(machine.COMMANDS)}")
    who = await authorize(request, "rotate", await _secret_path(request, rotation_id))
    doc = await json_body(request, allowed={"force"}) if request.can_read_body else {}
    force = doc.get("force", False)
    if not isinstance(force, bool):
        raise InvalidInput("'force' must be true or false")
    request[AUDIT_TARGET] += f": {verb}{' (force)' if force else ''}"
    result = await request.app[ROTATIONS].act(rotation_id, verb, force=force, actor=who.arn)
    return json_response(result)


# -- webhooks ---------------------------------------------------------------------------------


MAX_URL = 2048


def webhook_url(raw: object) -> str:
    """An http(s) URL kmsd may send to: the syntax rules of ``kmsd.domain.outbound.check_url``.

    Checked before anything resolves the host: a malformed URL is the caller's mistake (400),
    never a resolver error, and it never reaches the delivery loop. Where the host leads is
    judged next, by the same guard the deliveries use (``webhooks.check_destination``).
    """
    if not isinstance(raw, str) or len(raw) > MAX_URL or not raw.isprintable() or " " in raw:
        raise InvalidInput(
            f"'url' must be an http(s) URL of at most {MAX_URL} printable characters, no spaces"
        )
    outbound.check_url(raw)
    return raw


async def set_webhook(request: web.Request) -> web.Response:
    app_path = NodePath.parse(request.match_info["path"])
    if len(app_path.segments) != 2:
        raise InvalidInput("a webhook belongs to an application: namespace/application")
    who = await authorize(request, "admin", str(app_path))
    doc = await json_body(request, allowed={"url"})
    url = webhook_url(doc.get("url"))
    await webhooks.check_destination(url, request.app[SETTINGS].webhook_allowed_cidrs)
    # Derived with KMS before anything changes: a KMS failure leaves the old hook as it was.
    new = await request.app[WEBHOOK_KEYS].create(str(app_path))
    async with request.app[POOL].acquire() as conn, conn.transaction():
        # A new hook starts afresh: what was queued for the old one is not replayed to it.
        await conn.execute(_DROP_UNDELIVERED, str(app_path))
        await conn.execute(_SET_WEBHOOK, str(app_path), url, new.key_id, new.salt, who.arn)
    # The key is shown once, to whoever set the hook: the receiver verifies with it. kmsd keeps
    # only the salt and the KMS key id, and derives the key again for each delivery.
    return json_response(
        {
            "app": str(app_path),
            "url": url,
            "hmac_key": new.key,
            "signature_header": "X-Kmsd-Signature: sha256=<hex HMAC-SHA256 of the body>",
        },
        status=201,
    )


async def delete_webhook(request: web.Request) -> web.Response:
    app_path = NodePath.parse(request.match_info["path"])
    await authorize(request, "admin", str(app_path))
    deleted = await request.app[POOL].fetchval(
        "DELETE FROM webhooks WHERE app_path = $1 RETURNING app_path", str(app_path)
    )
    await request.app[POOL].execute(_DROP_UNDELIVERED, str(app_path))
    if deleted is None:
        raise NotFound(f"{app_path} has no webhook")
    return web.Response(status=204)


def setup_rotation_routes(app: web.Application) -> None:
    app.router.add_post("/v1/rotations", start)
    app.router.add_get("/v1/rotations", list_rotations)
    app.router.add_get("/v1/rotations/{id}", describe)
    app.router.add_post("/v1/rotations/{id}/{verb}", act)
    app.router.add_put("/v1/webhooks/{path:.+}", set_webhook)
    app.router.add_delete("/v1/webhooks/{path:.+}", delete_webhook)
