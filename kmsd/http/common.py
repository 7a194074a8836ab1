"""Helpers shared by handlers: JSON bodies in, JSON out, the caller's principal."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any

import orjson
from aiohttp import web

from kmsd.domain.signin import Principal
from kmsd.errors import InvalidInput, KmsError, Unauthenticated, UnsupportedMediaType

PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)
# The caller's address after trusted-proxy resolution (None if the peer is not an IP).
CLIENT_IP = web.RequestKey("client_ip", str)
# Set by handlers for the audit row: done early (watch), the target, the claimed identity.
AUDITED = web.RequestKey("audited", bool)
AUDIT_TARGET = web.RequestKey("audit_target", str)
AUDIT_CLAIMED = web.RequestKey("audit_claimed", str)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def json_body(
    request: web.Request, allowed: AbstractSet[str] | None = None
) -> dict[str, Any]:
    """Parse a JSON object body or raise a 400/415 that says what was wrong.

    With ``allowed``, a field outside it is a 400: a typo must not be silently ignored.
    """
    if request.content_type not in ("application/json", ""):
        raise UnsupportedMediaType("send the request body as application/json")
    raw = await request.read()
    try:
        doc = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    if allowed is not None and (unknown := sorted(set(doc) - allowed)):
        raise InvalidInput(
            f"unknown field(s) {', '.join(map(repr, unknown))}; "
            f"this call takes {', '.join(sorted(allowed))}"
        )
    return doc


def principal(request: web.Request) -> Principal:
    found: Principal | None = request.get(PRINCIPAL)
    if found is None:
        raise Unauthenticated("send Authorization: Bearer TOKEN from POST /v1/auth/aws/login")
    return found


def flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise InvalidInput(f"query parameter {name!r} must be true or false")
    return raw in ("true", "1")


def problem_response(err: KmsError, request_id: str) -> web.Response:
    """Render a KmsError as application/problem+json (RFC 9457) with the request id."""
    body = err.problem()
    body["request_id"] = request_id
    return web.Response(
        body=orjson.dumps(body),
        status=err.http_status,
        content_type="application/problem+json",
        headers=err.headers or None,
    )
