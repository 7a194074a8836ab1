"""Audit every API call, allowed or denied, and fail closed when the trail cannot be written.

- Reads (and sign-ins) get one row after the handler, with the final status.
- Changes (PUT/POST/DELETE other than sign-in and watch) get an ``attempt`` row *before* the
  handler runs - if that cannot be written nothing changes - and an outcome row after. The
  attempt row names the target the handler will act on, also when the body, the query or an
  id names it (``kmsd.domain.audit_target``): the body is read here once (aiohttp keeps it for
  the handler), a binding's prefix comes from the bindings in memory.
- A watch is audited when it is accepted (before the hold), so waking 10,000 polls never
  waits on the audit trail; refusals are audited like any other call.
"""

from __future__ import annotations

import dataclasses

import structlog
from aiohttp import web

from kmsd.db.audit import AuditUnavailable
from kmsd.domain.audit import AuditEntry, outcome_of
from kmsd.domain.audit_target import attempt_target, reads_body
from kmsd.domain.inputs import parse_id
from kmsd.errors import Unavailable
from kmsd.http.common import (
    AUDIT_CLAIMED,
    AUDIT_DENIED,
    AUDIT_TARGET,
    AUDITED,
    CLIENT_IP,
    PRINCIPAL,
    REQUEST_ID,
    json_body,
    problem_response,
)
from kmsd.keys import AUDIT, BINDINGS, CLOCK, SETTINGS

log = structlog.get_logger(__name__)

# (method, route) -> action. Routes not listed are audited as "unknown".
ACTIONS: dict[tuple[str, str], str] = {
    ("POST", "/v1/auth/aws/login"): "auth.login",
    ("GET", "/v1/auth/whoami"): "auth.whoami",
    ("GET", "/v1/nodes"): "node.list",
    ("PUT", "/v1/nodes/{path}"): "node.create",
    ("GET", "/v1/nodes/{path}"): "node.read",
    ("DELETE", "/v1/nodes/{path}"): "node.delete",
    ("PUT", "/v1/secrets/{ref}"): "secret.put",
    ("GET", "/v1/secrets/{ref}"): "secret.read",
    ("DELETE", "/v1/secrets/{ref}"): "secret.delete",
    ("POST", "/v1/generate/{ref}"): "secret.generate",
    ("POST", "/v1/datakeys/{ref}"): "datakey.create",
    ("GET", "/v1/effective/{path}"): "effective.read",
    ("POST", "/v1/watch"): "watch",
    ("GET", "/v1/adoption/{path}"): "adoption.read",
    ("DELETE", "/v1/adoption/{path}"): "adoption.forget",
    ("GET", "/v1/bindings"): "binding.list",
    ("POST", "/v1/bindings"): "binding.grant",
    ("DELETE", "/v1/bindings/{id}"): "binding.revoke",
    ("GET", "/v1/iam-policy/app/{path}"): "iam_policy.app",
    ("GET", "/v1/iam-policy/drift/{path}"): "iam_policy.drift",
    ("GET", "/v1/iam-policy/server"): "iam_policy.server",
    ("GET", "/v1/expiring"): "secret.expiring",
    ("POST", "/v1/shares"): "share.create",
    ("DELETE", "/v1/shares"): "share.delete",
    ("PUT", "/v1/refs/{ref}"): "ref.create",
    ("DELETE", "/v1/refs/{ref}"): "ref.delete",
    ("POST", "/v1/rotations"): "rotation.start",
    ("GET", "/v1/rotations"): "rotation.list",
    ("GET", "/v1/rotations/{id}"): "rotation.read",
    ("POST", "/v1/rotations/{id}/{verb}"): "rotation.command",
    ("PUT", "/v1/webhooks/{path}"): "webhook.set",
    ("DELETE", "/v1/webhooks/{path}"): "webhook.delete",
    ("POST", "/v1/console/links"): "console.link",
    ("GET", "/ui/login"): "console.login",
    ("GET", "/ui/rotations"): "console.rotations",
    ("GET", "/ui/rotations/{id}"): "console.rotation",
    ("GET", "/ui/rotations/{id}/events"): "console.rotation_events",
    ("POST", "/ui/logout"): "console.logout",
    ("GET", "/ui/signed-out"): "console.signed_out",
    ("GET", "/ui/"): "console.home",
    ("GET", "/ui/tree"): "console.tree",
    ("GET", "/ui/node/{path}"): "console.node",
    ("GET", "/ui/secret/{path}"): "console.secret",
    ("GET", "/ui/access"): "console.access",
    ("GET", "/ui/audit"): "console.audit",
    ("GET", "/ui/fleet"): "console.fleet",
    ("GET", "/ui/expiring"): "console.expiring",
    ("GET", "/v1/audit"): "audit.list",
    ("POST", "/v1/audit/verify"): "audit.verify",
    ("GET", "/v1/outbox"): "outbox.list",
    ("POST", "/v1/outbox/{id}/retry"): "outbox.retry",
    ("DELETE", "/v1/outbox/{id}"): "outbox.discard",
    ("GET", "/v1/openapi.json"): "openapi.read",
}
# Changes get a row before they run (fail closed before anything happens).
_NOT_CHANGES = frozenset({"auth.login", "watch", "audit.verify"})
# The API and the console; /healthz, /metrics and the console's CSS and JS (public, the same
# for everyone) are not calls on anyone's behalf.
AUDITED_PREFIXES = ("/v1/", "/ui/")
UNAUDITED_PREFIXES = ("/ui/assets/",)
FAIL_CLOSED = "the audit trail cannot be written, so the call is refused (fail closed)"


def _action(request: web.Request) -> str:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else ""
    return ACTIONS.get((request.method, route), "unknown")


def _entry(request: web.Request, status: int, outcome: str | None = None) -> AuditEntry:
    who = request.get(PRINCIPAL)
    info = request.match_info
    target = request.get(AUDIT_TARGET) or info.get("path") or info.get("ref") or ""
    return AuditEntry(
        at=request.app[CLOCK].now(),
        request_id=request[REQUEST_ID],
        replica=request.app[SETTINGS].replica_id,
        principal=who.arn if who else "-",
        claimed=_printable(request.get(AUDIT_CLAIMED, "")),
        source_ip=request.get(CLIENT_IP, request.remote or ""),
        action=_action(request),
        target=_printable(target),
        outcome=outcome or ("denied" if request.get(AUDIT_DENIED) else outcome_of(status)),
        status=status,
    )


def _printable(text: str, limit: int = 512) -> str:
    """Caller-supplied text, made safe for JSON and PostgreSQL (no NUL, no lone surrogates)."""
    safe = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return safe[:limit]


async def audit_now(request: web.Request, status: int = 200) -> None:
    """Write this call's row now (handlers that answer late, like watch); raise if impossible."""
    try:
        await request.app[AUDIT].write(_entry(request, status))
    except AuditUnavailable:
        raise Unavailable(FAIL_CLOSED) from None
    request[AUDITED] = True


async def audit_outcome(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Write the outcome row of an API call; answer 503 instead if it cannot be written."""
    if (
        request.path.startswith(AUDITED_PREFIXES)
        and not request.path.startswith(UNAUDITED_PREFIXES)
        and not request.get(AUDITED)
    ):
        try:
            await request.app[AUDIT].write(_entry(request, response.status))
        except AuditUnavailable:
            if response.status >= 500:
                # Already a failure (its attempt row is in the trail): keep what it says, e.g.
                # that a value reached SM and will be reconciled, rather than hide it.
                log.error("audit_outcome_lost", status=response.status)
                return response
            return problem_response(Unavailable(FAIL_CLOSED), request[REQUEST_ID])
    return response


async def write_attempt(request: web.Request) -> None:
    """The attempt row of a change, once the caller is known and before anything changes."""
    action = _action(request)
    if (
        request.path.startswith(AUDITED_PREFIXES)
        and request.method != "GET"
        and action not in _NOT_CHANGES
    ):
        target = await _attempt_target(request, action)
        entry = dataclasses.replace(_entry(request, 0, "attempt"), target=_printable(target))
        try:
            await request.app[AUDIT].write(entry)
        except AuditUnavailable:
            raise Unavailable(FAIL_CLOSED) from None


async def _attempt_target(request: web.Request, action: str) -> str:
    body = None
    if reads_body(action):
        # A body that cannot be read whole (over the size limit, cut off, not JSON) refuses
        # the call here, before any row: once part of the stream is consumed, the handler
        # must never get to parse what is left of it.
        # Read once (the handler gets the same bytes again, with its own rules); a value may
        # hold anything, NUL included: it goes to SM, and this parse only looks for the target.
        body = await json_body(request, opaque=frozenset({"value"}))
    known_path = None
    if action == "binding.revoke":
        wanted = parse_id(request.match_info.get("id", ""))
        found = [b for b in await request.app[BINDINGS].all() if b.id == wanted]
        known_path = found[0].prefix if found else None
    return attempt_target(
        action, request.match_info, request.query, body=body, known_path=known_path
    )
