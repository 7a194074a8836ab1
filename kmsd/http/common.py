"""Helpers shared by handlers: JSON bodies in, JSON out, the caller's principal."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any

import orjson
from aiohttp import web

from kmsd.domain.inputs import check_depth
from kmsd.domain.signin import Principal
from kmsd.errors import (
    InvalidInput,
    KmsError,
    PayloadTooLarge,
    Unauthenticated,
    UnsupportedMediaType,
)

PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)
# The caller's address after trusted-proxy resolution (None if the peer is not an IP).
CLIENT_IP = web.RequestKey("client_ip", str)
# Set by handlers for the audit row: done early (watch), the target, the claimed identity.
AUDITED = web.RequestKey("audited", bool)
AUDIT_TARGET = web.RequestKey("audit_target", str)
AUDIT_CLAIMED = web.RequestKey("audit_claimed", str)
# Set when a refusal is answered 404 to hide what the caller may not see: audited as denied.
AUDIT_DENIED = web.RequestKey("audit_denied", bool)
# The SHA-256 of the caller's session token (never the token): what per-token limits count.
TOKEN_KEY = web.RequestKey("token_key", bytes)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


# PostgreSQL's text and jsonb cannot hold U+0000: client text that may be stored (a body's
# fields, a query filter) is refused with it up front, rather than failing in the database.
NUL = "\x00"


def _nul_at(node: Any, where: str) -> str | None:
    """The JSON path of the first string (or object key) holding NUL, if any."""
    if isinstance(node, str):
        return where if NUL in node else None
    if isinstance(node, dict):
        for key, value in node.items():
            found = f"{where} (a key)" if NUL in key else _nul_at(value, f"{where}.{key}")
            if found:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if found := _nul_at(value, f"{where}[{i}]"):
                return found
    return None


async def json_body(
    request: web.Request,
    allowed: AbstractSet[str] | None = None,
    opaque: AbstractSet[str] = frozenset(),
    *,
    max_size: int | None = None,
) -> dict[str, Any]:
    """Parse a JSON object body or raise a 400/413/415 that says what was wrong.

    With ``allowed``, a field outside it is a 400: a typo must not be silently ignored.
    No string may hold NUL (PostgreSQL cannot store it), except in the ``opaque`` fields:
    a secret's value, which goes to Secrets Manager and never to the database.
    With ``max_size``, the body may be that large instead of the app's ``client_max_size``,
    and is not kept on the request (a held poll must not pin its body for the whole hold).
    """
    if request.content_type not in ("application/json", ""):
        raise UnsupportedMediaType("send the request body as application/json")
    if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        # Bodies are small JSON documents: a compressed one is refused unread (no decoder
        # errors, no decompression bombs).
        raise UnsupportedMediaType("send the request body uncompressed (no Content-Encoding)")
    raw = await request.read() if max_size is None else await _read_uncached(request, max_size)
    try:
        doc = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    check_depth(doc)
    if allowed is not None and (unknown := sorted(set(doc) - allowed)):
        raise InvalidInput(
            f"unknown field(s) {', '.join(map(repr, unknown))}; "
            f"this call takes {', '.join(sorted(allowed))}"
        )
    for key, value in doc.items():
        if key not in opaque and (where := _nul_at({key: value}, "body")):
            raise InvalidInput(f"{where} contains U+0000 (NUL), which kmsd cannot store")
    return doc


async def _read_uncached(request: web.Request, max_size: int) -> bytes:
    """The body, up to ``max_size`` bytes (413 past it, unread if its length says so)."""
    too_large = PayloadTooLarge(f"the body of {request.method} {request.path} is over {max_size} B")
    if request.content_length is not None and request.content_length > max_size:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > max_size:
            raise too_large
    return bytes(body)


def check_query(request: web.Request) -> None:
    """Refuse query parameters holding NUL: they are filters and names, never values."""
    for key, value in request.query.items():
        if NUL in key or NUL in value:
            raise InvalidInput(f"query parameter {key[:40]!r} contains U+0000 (NUL)")


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
