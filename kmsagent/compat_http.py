"""AWS's Secrets Manager Agent API and the SM JSON protocol, served on 127.0.0.1 from the cache.

``kmsagent run --sm-compat-port 2773`` lets applications written for AWS's agent, or using an
AWS SDK with ``AWS_ENDPOINT_URL_SECRETS_MANAGER=http://127.0.0.1:2773``, read their secrets
unchanged. The values are the agent's pushed cache: kmsd tells the agent of a change within
milliseconds, so there is no TTL to go stale; ``refreshNow=true`` asks kmsd first anyway.

What fences the listener against a server-side request forgery through a URL fetcher or proxy
on the host (see docs/agent.md):
- it binds 127.0.0.1 only, with an IP TTL of 1 on every connection (no answer leaves the host);
- any ``X-Forwarded-For`` or ``Forwarded`` header is refused (400): the request was relayed;
- AWS agent requests (``GET``) must carry ``X-Aws-Parameters-Secrets-Token`` (or
  ``X-Vault-Token``) equal to the token (``AWS_TOKEN``, a value or ``file://PATH``, else the
  token file), compared as bytes in constant time (403 ``Bad Token``);
- SDK requests must be a ``POST /`` with ``X-Amz-Target`` naming one of four read operations,
  ``Content-Type: application/x-amz-json-1.1`` and a SigV4 ``Authorization`` header: headers a
  fetched URL cannot set. Anything else is refused. An SDK cannot send the token, so a
  process on the host that can send arbitrary headers can read the host's secrets here:
  ``--no-sm-compat-sdk`` turns this part off where that matters.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from kmsagent.api import Problem, note_read
from kmsagent.compat import (
    BadRequest,
    Query,
    SmError,
    batch_ids,
    describe,
    find,
    list_versions,
    parse_get,
    parse_sdk,
    pick,
    secret_id_of,
    secret_value,
)
from kmsagent.state import PathView, Secret
from kmsagent.sync import Agent

COMPAT_AGENT: web.AppKey[Agent] = web.AppKey("compat_agent", Agent)
TOKEN_HEADERS = (b"x-aws-parameters-secrets-token", b"x-vault-token")
AMZ_JSON = "application/x-amz-json-1.1"
SDK_OPERATIONS = frozenset(
    {"GetSecretValue", "BatchGetSecretValue", "DescribeSecret", "ListSecretVersionIds"}
)
MAX_BODY = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _text(status: int, text: str) -> web.Response:
    """AWS's agent answers its own refusals in plain text."""
    return web.Response(status=status, text=text)


def _sm(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")


def _sdk(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type=AMZ_JSON)


def _token_ok(request: web.Request, expected: bytes) -> bool:
    given = [v.strip() for k, v in request.raw_headers if k.lower() in TOKEN_HEADERS]
    return any(hmac.compare_digest(g, expected) for g in given)


def fence(token: str, *, sdk: bool = True) -> Middleware:
    """The SSRF fence in AWS's order: ping, forwarding, token (or SDK headers), method."""
    expected = token.encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = _refusal(request, expected, sdk=sdk)
        if refused is not None:
            return refused
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return _text(404, "Not found")
        except BadRequest as exc:
            return _text(400, str(exc))
        except SmError as exc:
            return _sm(exc.body(), exc.status)

    return guard


def _refusal(request: web.Request, expected: bytes, *, sdk: bool) -> web.Response | None:
    """The answer to a request that does not get through the fence, or None."""
    if request.path == "/ping" and request.method == "GET":
        return _text(200, "healthy")
    if "X-Forwarded-For" in request.headers or "Forwarded" in request.headers:
        return _text(400, "Forwarded")
    if sdk and request.path == "/" and request.method == "POST":
        return _sdk_refusal(request)
    if not _token_ok(request, expected):
        return _text(403, "Bad Token")
    if request.method != "GET":
        return _text(405, "Not allowed")
    return None


def _sdk_refusal(request: web.Request) -> web.Response | None:
    """Why an SDK request is refused, or None: headers that a fetched URL cannot carry."""
    target = request.headers.get("X-Amz-Target", "")
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 Credential=") or not target:
        return _sdk(
            {
                "__type": "MissingAuthenticationTokenException",
                "message": "send a SigV4-signed Secrets Manager request (an AWS SDK does)",
            },
            403,
        )
    service, _, operation = target.partition(".")
    if service != "secretsmanager" or operation not in SDK_OPERATIONS:
        return _sdk(
            {
                "__type": "UnknownOperationException",
                "message": f"kmsagent serves {', '.join(sorted(SDK_OPERATIONS))} only",
            },
            400,
        )
    if request.content_type != AMZ_JSON:
        return _sdk({"__type": "SerializationException", "message": f"expected {AMZ_JSON}"}, 400)
    return None


def _remember(request: web.Request, view: PathView, secret: Secret, version_id: str) -> None:
    """A read counts in adoption for its process: ``X-App-Process-Id``, else the peer's pid."""
    with contextlib.suppress(Problem):  # an odd header must not cost an app its read
        note_read(request.app[COMPAT_AGENT], request, view.path, {secret.name: version_id})


def _views(agent: Agent) -> dict[str, PathView]:
    return {p: s.view for p, s in agent.paths.items() if s.view is not None}


async def _value(request: web.Request, query: Query, *, dates_as_text: bool) -> dict[str, Any]:
    agent = request.app[COMPAT_AGENT]
    if query.refresh_now:
        await agent.refresh_all()
    view, secret = find(_views(agent), query.secret_id)
    version = pick(secret, query.version_id, query.version_stage)
    _remember(request, view, secret, version.version_id)
    return secret_value(secret, version, dates_as_text=dates_as_text)


async def get_query(request: web.Request) -> web.Response:
    """``GET /secretsmanager/get?secretId=ID[&versionId=][&versionStage=][&refreshNow=]``."""
    query = parse_get(request.query.items())
    return _sm(await _value(request, query, dates_as_text=True))


async def get_path(request: web.Request) -> web.Response:
    """``GET /v1/ID[?versionId=][&versionStage=][&refreshNow=]``."""
    query = parse_get(request.query.items(), path_id=request.match_info["id"])
    return _sm(await _value(request, query, dates_as_text=True))


async def sdk_call(request: web.Request) -> web.Response:
    """``POST /``: the SM JSON protocol's read operations, as an AWS SDK sends them."""
    operation = request.headers["X-Amz-Target"].partition(".")[2]
    try:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise SmError(413, "RequestEntityTooLargeException", "the request body is too large")
        try:
            doc = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise SmError(400, "SerializationException", "the body is not JSON") from None
        if operation == "BatchGetSecretValue":
            return _sdk(await _batch(request, batch_ids(doc)))
        if operation == "GetSecretValue":
            return _sdk(await _value(request, parse_sdk(doc), dates_as_text=False))
        _, secret = find(_views(request.app[COMPAT_AGENT]), secret_id_of(doc))
        return _sdk(describe(secret) if operation == "DescribeSecret" else list_versions(secret))
    except SmError as exc:
        return _sdk(exc.body(), exc.status)


async def _batch(request: web.Request, ids: list[str]) -> dict[str, Any]:
    values, errors = [], []
    for secret_id in ids:
        try:
            values.append(await _value(request, Query(secret_id), dates_as_text=False))
        except SmError as exc:
            errors.append({"SecretId": secret_id, "ErrorCode": exc.code, "Message": exc.message})
    return {"SecretValues": values, "Errors": errors}


def compat_app(agent: Agent, token: str, *, sdk: bool = True) -> web.Application:
    """The compat listener's application (served on 127.0.0.1 only); ``sdk``: also the SM
    JSON protocol, which cannot ask for the token (see the module's docstring)."""
    app = web.Application(middlewares=[fence(token, sdk=sdk)], client_max_size=MAX_BODY)
    app[COMPAT_AGENT] = agent
    app.router.add_get("/secretsmanager/get", get_query)
    app.router.add_get("/v1/{id:.+}", get_path)
    if sdk:
        app.router.add_post("/", sdk_call)
    return app
