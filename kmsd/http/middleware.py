"""Middlewares: request id and access log (outermost), then errors and the audit row.

Order matters and is set in ``kmsd.app.create_app``: the log middleware must see the status
that the error mapping produced, so it wraps it.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import asyncpg
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from kmsd.errors import KmsError, MethodNotAllowed, NotFound, PayloadTooLarge, Unavailable
from kmsd.http.access import resolve_client_address
from kmsd.http.audit import audit_outcome
from kmsd.http.auth import admit
from kmsd.http.common import PRINCIPAL, REQUEST_ID, problem_response
from kmsd.keys import METRICS

log = structlog.get_logger("kmsd.http")

# A database connection lost under a handler: answered 503 + Retry-After, never a 500.
DB_LOST = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    ConnectionError,
)

CLIENT_CLOSED_REQUEST = 499
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

# aiohttp's own refusals (no route, wrong method, body over client_max_size), as problems.
_HTTP_ERRORS: dict[int, type[KmsError]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id and the client address, then write one line per request."""
    offered = request.headers.get("X-Request-Id", "")
    # A caller's id is kept only if it is plainly an id: it lands in logs and the audit chain.
    request_id = offered if _REQUEST_ID_RE.fullmatch(offered) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    remote = resolve_client_address(request)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    except asyncio.CancelledError:
        status = CLIENT_CLOSED_REQUEST  # the client hung up: not a server error
        raise
    finally:
        duration = time.perf_counter() - started
        route = _route(request)
        who = request.get(PRINCIPAL)
        log.info(
            "request",
            method=request.method,
            route=route,
            status=status,
            duration_ms=round(duration * 1000, 2),
            principal=who.arn if who else None,
            remote=remote,
        )
        metrics = request.app[METRICS]
        metrics.requests.labels(request.method, route, str(status)).inc()
        metrics.latency.labels(route).observe(duration)


@web.middleware
async def outcome(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admit the call, run it, turn errors into problem+json, write its audit row.

    Admission (allowlist, sign-in, attempt row) and the audit row are plain calls that finish
    before or after the hold: a held poll keeps each middleware's frame alive for the whole
    hold, so there are as few middlewares as possible.
    """
    request_id = request[REQUEST_ID]
    try:
        await admit(request)
        response = await handler(request)
    except KmsError as err:
        response = problem_response(err, request_id)
    except web.HTTPException as exc:
        mapped = _HTTP_ERRORS.get(exc.status)
        if mapped is None:
            raise
        refusal = mapped(f"{exc.reason}: {request.method} {request.path}")
        # A 405 must say which methods the resource has (RFC 9110 15.5.6): keep aiohttp's Allow.
        if "Allow" in exc.headers:
            refusal.headers["Allow"] = exc.headers["Allow"]
        response = problem_response(refusal, request_id)
    except asyncio.CancelledError:
        # The client hung up. Writes are shielded and may still complete: the trail must
        # show the call all the same (499, as nginx logs a closed request), then unwind.
        await audit_outcome(request, web.Response(status=CLIENT_CLOSED_REQUEST))
        raise
    except DB_LOST as exc:
        # The database went away mid-call (a write that reached SM says so itself, with its
        # own detail, before this): nothing is known to have changed; retry.
        log.warning("database_unavailable", error=type(exc).__name__)
        response = problem_response(
            Unavailable("kmsd lost its database connection; retry after Retry-After"),
            request_id,
        )
    except Exception:
        log.exception("unhandled_error")
        response = problem_response(KmsError("internal error; quote the request id"), request_id)
    return await audit_outcome(request, response)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"
