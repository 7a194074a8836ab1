"""Signing in to the console: one-time links, the session cookie, signing out.

``kmsctl console`` asks for a link (``POST /v1/console/links``, with the caller's API token,
itself proven by a signed STS request); opening it once (``GET /ui/login?code=``) trades the
code for a console session in a cookie (HttpOnly, SameSite=Strict, Secure over TLS) and
redirects to a console page. A link is good for two minutes, once, from the address that asked.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta

from aiohttp import web

from kmsd.db import sessions
from kmsd.domain.bearer import CONSOLE_PREFIX
from kmsd.domain.signin import principal_from_arn
from kmsd.errors import Unauthenticated
from kmsd.http.common import CLIENT_IP, PRINCIPAL, TOKEN_KEY, json_response, principal
from kmsd.http.console.pages import COOKIE, SECURITY_HEADERS
from kmsd.keys import CLOCK, POOL, SESSIONS, SETTINGS

LINK_TTL = timedelta(minutes=2)
CONSOLE_TTL = timedelta(hours=8)
HOME = "/ui/tree"
# Where a link may lead: a console page of this host (no scheme, no host, no "//", no "..").
_NEXT = re.compile(r"/ui(/[A-Za-z0-9._~-]+)*")
_INSERT_CODE = """
INSERT INTO console_codes (code_hash, principal, expires_at, ip) VALUES ($1, $2, $3, $4)
"""
_USE_CODE = """
UPDATE console_codes SET used_at = now()
WHERE code_hash = $1 AND used_at IS NULL AND expires_at > $2 AND ($3::text IS NULL OR ip = $3)
RETURNING principal
"""


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def safe_next(target: str) -> str:
    """A console page to go to after signing in; the tree for anything else (no open
    redirect)."""
    parts = target.split("/")
    ok = _NEXT.fullmatch(target) and target != "/ui" and "." not in parts and ".." not in parts
    return target if ok else HOME


async def create_link(request: web.Request) -> web.Response:
    """A one-time URL that signs the caller in to the console (good for two minutes)."""
    who = principal(request)
    code = secrets.token_urlsafe(32)
    expires = request.app[CLOCK].now() + LINK_TTL
    await request.app[POOL].execute(_INSERT_CODE, _hash(code), who.arn, expires, request[CLIENT_IP])
    path = f"/ui/login?code={code}"
    return json_response({"path": path, "expires_at": expires.isoformat()}, status=201)


async def login(request: web.Request) -> web.Response:
    code = request.query.get("code", "")
    now = request.app[CLOCK].now()
    settings = request.app[SETTINGS]
    # Like a token, a link works only from the address that asked for it (KMSD_BIND_TOKEN_IP).
    ip = request[CLIENT_IP] if settings.bind_token_ip else None
    arn = await request.app[POOL].fetchval(_USE_CODE, _hash(code), now, ip) if code else None
    if arn is None:
        raise Unauthenticated(
            "this console link is unknown, used, expired or meant for another address: "
            "run kmsctl console"
        )
    who = principal_from_arn(arn)
    token, expires = await sessions.create_session(
        request.app[POOL],
        who,
        request[CLIENT_IP],
        now,
        min(CONSOLE_TTL, timedelta(seconds=settings.token_ttl_s)),
        prefix=CONSOLE_PREFIX,
    )
    request[PRINCIPAL] = who
    response = web.Response(
        status=303,
        headers={"Location": safe_next(request.query.get("next", ""))} | SECURITY_HEADERS,
    )
    response.set_cookie(
        COOKIE,
        token,
        expires=expires.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
    )
    return response


async def logout(request: web.Request) -> web.Response:
    """End this console session (a POST with the CSRF token) and drop the cookie."""
    await sessions.revoke(request.app[POOL], request[TOKEN_KEY], request.app[SESSIONS])
    response = web.Response(status=303, headers={"Location": "/ui/signed-out"} | SECURITY_HEADERS)
    response.del_cookie(COOKIE, path="/")
    return response


async def signed_out(request: web.Request) -> web.Response:
    return web.Response(
        text="<!doctype html><html lang=en><meta charset=utf-8><title>Signed out</title>"
        "<link rel=stylesheet href=/ui/assets/console.css><main><h1>Signed out</h1>"
        "<p>Open a new link with <code>kmsctl console</code>.</p></main></html>",
        content_type="text/html",
        headers=SECURITY_HEADERS,
    )
