"""Who may do what from where: client address, the global allowlist, bindings."""

from __future__ import annotations

import ipaddress

from aiohttp import web

from kmsd.db import bindings as bindings_db
from kmsd.domain.access import (
    GRANTS,
    PERMISSIONS,
    ROOT,
    Binding,
    IpAddress,
    arn_matches,
    check_pattern,
    client_ip,
    covers,
    decide,
    ip_in,
    parse_cidrs,
)
from kmsd.domain.inputs import parse_id
from kmsd.domain.names import NodePath
from kmsd.domain.signin import Principal
from kmsd.errors import Forbidden, InvalidInput, NotFound
from kmsd.http.common import (
    AUDIT_DENIED,
    AUDIT_TARGET,
    CLIENT_IP,
    json_body,
    json_response,
    principal,
)
from kmsd.keys import BINDINGS, POOL, SETTINGS


def resolve_client_address(request: web.Request) -> str:
    """Resolve and remember the caller's address (X-Forwarded-For only from trusted proxies)."""
    ip = client_ip(
        request.remote,
        # A proxy may add its own header line rather than extend the client's: read them all.
        ",".join(request.headers.getall("X-Forwarded-For", [])),
        request.app[SETTINGS].trusted_proxies,
    )
    request[CLIENT_IP] = address = str(ip) if ip is not None else (request.remote or "")
    return address


def caller_ip(request: web.Request) -> IpAddress | None:
    try:
        return ipaddress.ip_address(request.get(CLIENT_IP, ""))
    except ValueError:
        return None


# A load balancer's health check may come from anywhere; everything else is behind the fence.
UNFENCED = frozenset({"/healthz"})


def check_allowlist(request: web.Request) -> None:
    """Refuse calls from outside ``KMSD_ALLOWED_CIDRS`` (when set): the API, the console's pages
    and event streams, the login link and /metrics alike; only /healthz is outside the fence."""
    allowed = request.app[SETTINGS].allowed_cidrs
    if allowed and request.path not in UNFENCED and not ip_in(caller_ip(request), allowed):
        raise Forbidden(f"calls from {request[CLIENT_IP]} are not allowed (KMSD_ALLOWED_CIDRS)")


async def may(request: web.Request, needed: str, path: str) -> bool:
    """Whether the caller may do ``needed`` on ``path`` (for filtering; no refusal)."""
    decision = decide(
        principal(request).arn,
        path,
        needed,
        ip=caller_ip(request),
        bindings=await request.app[BINDINGS].all(),
        admins=request.app[SETTINGS].admins,
    )
    return decision.allowed


async def authorize(request: web.Request, needed: str, path: str) -> Principal:
    """Return the caller if it may do ``needed`` on ``path``; raise Forbidden otherwise."""
    who = principal(request)
    decision = decide(
        who.arn,
        path,
        needed,
        ip=caller_ip(request),
        bindings=await request.app[BINDINGS].all(),
        admins=request.app[SETTINGS].admins,
    )
    if not decision.allowed:
        raise Forbidden(f"{who.arn} may not {needed} {path!r}: {decision.reason}")
    return who


def _prefix(raw: object) -> str:
    if raw == ROOT:
        return ROOT
    if not isinstance(raw, str):
        raise InvalidInput("'path' must be a path prefix such as prod/payments, or '*'")
    return str(NodePath.parse(raw))


async def grant(request: web.Request) -> web.Response:
    doc = await json_body(request, allowed={"principal", "path", "permission", "cidrs"})
    prefix = _prefix(doc.get("path"))
    request[AUDIT_TARGET] = prefix
    who = await authorize(request, "admin", prefix)
    pattern = doc.get("principal")
    if not isinstance(pattern, str):
        raise InvalidInput("'principal' must be an IAM role or user ARN pattern")
    check_pattern(pattern)
    permission = doc.get("permission")
    if permission not in PERMISSIONS:
        raise InvalidInput(f"'permission' must be one of {', '.join(PERMISSIONS)}")
    cidrs = doc.get("cidrs", [])
    if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
        raise InvalidInput("'cidrs' must be a list of CIDR strings")
    networks = [str(n) for n in parse_cidrs(cidrs)]
    pool = request.app[POOL]
    async with pool.acquire() as conn, conn.transaction():
        binding_id = await conn.fetchval(
            bindings_db.INSERT, pattern, prefix, permission, networks, who.arn
        )
        await conn.execute(bindings_db.NOTIFY)
    request.app[BINDINGS].invalidate()
    return json_response(
        {
            "id": binding_id,
            "principal": pattern,
            "path": prefix,
            "permission": permission,
            "cidrs": networks,
        },
        status=201,
    )


async def revoke(request: web.Request) -> web.Response:
    binding_id = parse_id(request.match_info["id"])
    if binding_id is None:  # ids are bigint identities: anything else names none
        raise NotFound(f"binding {request.match_info['id'][:40]!r} does not exist")
    request[AUDIT_TARGET] = f"binding {binding_id}"
    pool = request.app[POOL]
    row = await pool.fetchrow(bindings_db.GET, binding_id)
    if row is None:
        raise NotFound(f"binding {binding_id} does not exist")
    # The prefix first, so `audit list --path` finds it; the id, so the row says which binding.
    request[AUDIT_TARGET] = f"{row['prefix']} binding {binding_id}"
    if not await may(request, "view", row["prefix"]):
        # Who cannot even see the prefix learns nothing, not even that the id exists.
        request[AUDIT_DENIED] = True
        raise NotFound(f"binding {binding_id} does not exist")
    await authorize(request, "admin", row["prefix"])
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(bindings_db.DELETE, binding_id)
        await conn.execute(bindings_db.NOTIFY)
    request.app[BINDINGS].invalidate()
    return json_response({"id": binding_id, "revoked": True})


async def list_bindings(request: web.Request) -> web.Response:
    prefix = _prefix(request.query.get("path", ROOT))
    request[AUDIT_TARGET] = prefix
    await authorize(request, "view", prefix)
    found = [
        b
        for b in await request.app[BINDINGS].all()
        if covers(prefix, b.prefix) or (covers(b.prefix, prefix) and b.prefix != ROOT)
    ]
    return json_response({"bindings": [_doc(b) for b in found]})


def _doc(b: Binding) -> dict[str, object]:
    return {
        "id": b.id,
        "principal": b.principal,
        "path": b.prefix,
        "permission": b.permission,
        "cidrs": [str(c) for c in b.cidrs],
    }


async def whoami(request: web.Request) -> web.Response:
    who = principal(request)
    settings = request.app[SETTINGS]
    mine = [b for b in await request.app[BINDINGS].all() if arn_matches(b.principal, who.arn)]
    admin = any(arn_matches(p, who.arn) for p in settings.admins)
    return json_response(
        {
            "principal": who.arn,
            "caller_arn": who.caller_arn,
            "source_ip": request[CLIENT_IP],
            "admin": admin,
            "bindings": [{**_doc(b), "grants": sorted(GRANTS[b.permission])} for b in mine],
        }
    )
