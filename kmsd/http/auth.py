"""Sign-in (``POST /v1/auth/aws/login``) and the bearer-token middleware."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from kmsd.aws.sts import caller_arn
from kmsd.db import sessions, signins
from kmsd.domain.bearer import CSRF_HEADER, check_kind, csrf_matches, parse_bearer
from kmsd.domain.signin import LoginRequest, check_login, claimed_key_id, principal_from_arn
from kmsd.errors import Forbidden, KmsError, LoginRejected, Unauthenticated
from kmsd.http.access import check_allowlist
from kmsd.http.audit import write_attempt
from kmsd.http.common import (
    AUDIT_CLAIMED,
    CLIENT_IP,
    PRINCIPAL,
    TOKEN_KEY,
    check_query,
    json_body,
    json_response,
)
from kmsd.keys import CLOCK, HTTP, METRICS, POOL, SESSIONS, SETTINGS

log = structlog.get_logger(__name__)

LOGIN_FIELDS = frozenset(
    {"iam_http_request_method", "iam_request_url", "iam_request_body", "iam_request_headers"}
)
# Routes any caller may reach without a token.
PUBLIC_ROUTES = frozenset(
    {
        "/v1/auth/aws/login",
        "/v1/openapi.json",
        "/healthz",
        "/metrics",
        "/ui/login",
        "/ui/assets/{name}",
        "/ui/signed-out",
    }
)
# The console reads its session from a cookie (HttpOnly, SameSite=Strict) instead.
CONSOLE_COOKIE = "kmsd_console"


async def login(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    metrics = request.app[METRICS]
    try:
        req = LoginRequest.from_json(await json_body(request, allowed=LOGIN_FIELDS))
        request[AUDIT_CLAIMED] = claimed_key_id(req.headers)
        now = request.app[CLOCK].now()
        signed = check_login(
            req,
            sts_endpoint=settings.sts_endpoint,
            server_id=settings.server_id,
            now=now,
            max_skew=timedelta(seconds=settings.login_max_skew_s),
        )
        # Recorded before STS sees it, so a signature is spent whatever STS answers: a replay
        # racing the first use on another replica loses at the primary key, never at STS.
        if not await signins.first_use(request.app[POOL], signed):
            raise LoginRejected("this signed sign-in request was already used")
        who = principal_from_arn(await caller_arn(request.app[HTTP], settings.sts_endpoint, req))
    except KmsError as err:
        metrics.logins.labels("rejected").inc()
        log.info("login_rejected", reason=err.detail)
        raise
    token, expires = await sessions.create_session(
        request.app[POOL],
        who,
        request[CLIENT_IP],
        now,
        timedelta(seconds=settings.token_ttl_s),
    )
    request[PRINCIPAL] = who
    metrics.logins.labels("accepted").inc()
    log.info("login_accepted", principal=who.arn, caller_arn=who.caller_arn)
    return json_response(
        {
            "token": token,
            "principal": who.arn,
            "caller_arn": who.caller_arn,
            "expires_at": expires.isoformat(),
        }
    )


def _console_session(request: web.Request, cookie: str, *, console_route: bool) -> str:
    """The console session of a page, or of the console's own ``fetch`` to the API.

    The cookie is SameSite=Strict; on top of that every change (any method but GET and HEAD),
    and every API request at all, must carry the session's CSRF token and, when the browser
    names one, this host as its Origin: a page of another site can send neither.
    """
    if not cookie:
        raise Unauthenticated("sign in to the console with a link from: kmsctl console")
    token = parse_bearer(f"Bearer {cookie}")  # the cookie holds the same kind of token
    check_kind(token, console_route=True)
    if console_route and request.method in ("GET", "HEAD"):
        return token
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc.lower() != request.host.lower():
        raise Forbidden("this console request comes from another site")
    if not csrf_matches(token, request.headers.get(CSRF_HEADER, "")):
        raise Forbidden("the console's CSRF token is missing or belongs to another session")
    return token


async def admit(request: web.Request) -> None:
    """Allowlist, sign-in, query text, then the attempt row of a change: all before the handler.

    Called by the outcome middleware rather than being a middleware of its own: a held poll
    keeps each middleware's frame alive for the whole hold (bench/README.md, memory per poll).
    """
    check_allowlist(request)
    await authenticate(request)
    check_query(request)
    await write_attempt(request)


async def authenticate(request: web.Request) -> None:
    """Resolve ``Authorization: Bearer`` to a principal; refuse protected routes without one."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else ""
    if route in PUBLIC_ROUTES or request.match_info.http_exception is not None:
        return
    given = request.headers.getall("Authorization", [])
    if len(given) > 1:  # which line is the caller? Neither.
        raise Unauthenticated("send one Authorization header")
    header = given[0] if given else ""
    console_route = route.startswith("/ui/")
    cookie = request.cookies.get(CONSOLE_COOKIE, "")
    if header:
        token = parse_bearer(header)
        # The token checked is the token looked up: no second reading of the header.
        check_kind(token, console_route=console_route)
    elif console_route or (cookie and CSRF_HEADER in request.headers):
        token = _console_session(request, cookie, console_route=console_route)
    else:
        token = parse_bearer(header)  # refused: no credentials at all
    key = sessions.token_hash(token)  # hashed once: the lookup and per-token limits use it
    session = await sessions.lookup(
        request.app[POOL], key, request.app[SESSIONS], request.app[CLOCK].now()
    )
    if session is None:
        raise Unauthenticated("the bearer token is unknown or expired; sign in again")
    if request.app[SETTINGS].bind_token_ip and session.source_ip != request[CLIENT_IP]:
        raise Unauthenticated(
            "this token was issued to another IP address; sign in again from this one"
        )
    who = session.principal
    request[PRINCIPAL] = who
    request[TOKEN_KEY] = key
    structlog.contextvars.bind_contextvars(principal=who.arn)
