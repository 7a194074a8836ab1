"""The local API: HTTP over a Unix socket (and optionally 127.0.0.1 with a token header).

Every language has an HTTP client; none needs an AWS SDK or credentials. All answers about a
path carry ``X-Kmsagent-Path-Version``, ``X-Kmsagent-Cache-Age`` (seconds the cache may have
missed a change: 0 while kmsd holds the agent's poll, growing while kmsd is away) and
``X-Kmsagent-Upstream`` (``ok``, ``unreachable``, ``refused``).

The TCP listener is for runtimes that cannot speak to a Unix socket. As with AWS's own
caching agent, every request there must carry ``X-Kmsagent-Token`` (from a root-readable file)
and none may carry ``X-Forwarded-For``: a server-side request forgery through some proxy or
URL fetcher on the host can neither add the header nor hide that it was forwarded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import re
import socket
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, generate_latest

from kmsagent.metrics import registry_for
from kmsagent.peers import peer_process
from kmsagent.state import (
    STAGES,
    PathView,
    Secret,
    render_all,
    render_datakeys,
    render_version,
)
from kmsagent.sync import Agent, PathState

AGENT: web.AppKey[Agent] = web.AppKey("agent", Agent)
REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)
TOKEN_HEADER = "X-Kmsagent-Token"
PROCESS_HEADER = "X-App-Process-Id"
MAX_LOCAL_WATCH_S = 600.0
_PID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
PROBLEM = "application/problem+json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str, **headers: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.headers = status, title, detail, headers


def _problem(status: int, title: str, detail: str, headers: dict[str, str]) -> web.Response:
    slug = title.lower().replace(" ", "-")
    body: dict[str, Any] = {"type": f"https://kmsd.dev/problems/agent/{slug}", "title": title}
    body |= {"status": status, "detail": detail}
    return web.Response(
        status=status,
        body=orjson.dumps(body, option=orjson.OPT_APPEND_NEWLINE),
        content_type=PROBLEM,
        headers=headers,
    )


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as p:
        return _problem(p.status, p.title, p.detail, p.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _problem(exc.status, exc.reason, exc.text or exc.reason, {})


_TOKEN_NAME = TOKEN_HEADER.lower().encode("ascii")


def _raw_token(raw_headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token header's bytes as sent (never decoded: any byte may be in it); None if absent
    or repeated."""
    given = [value.strip() for name, value in raw_headers if name.lower() == _TOKEN_NAME]
    return given[0] if len(given) == 1 else None


def token_guard(token: str) -> Middleware:
    """The TCP listener's SSRF fence: the token header, and no sign of a forwarding proxy."""
    expected = token.encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if "X-Forwarded-For" in request.headers or "Forwarded" in request.headers:
            raise Problem(403, "Forwarded", "requests relayed by a proxy are refused")
        given = _raw_token(request.raw_headers)
        if given is None or not hmac.compare_digest(given, expected):
            raise Problem(
                401, "Token required", f"send {TOKEN_HEADER} with the token from the token file"
            )
        return await handler(request)

    return guard


# -- helpers -----------------------------------------------------------------------------------


def _state(request: web.Request) -> PathState:
    agent = request.app[AGENT]
    path = request.query.get("path")
    if path is None:
        if len(agent.paths) != 1:
            raise Problem(
                400, "Path required", f"this agent serves several paths: {sorted(agent.paths)}"
            )
        return next(iter(agent.paths.values()))
    state = agent.paths.get(path)
    if state is None:
        raise Problem(404, "Unknown path", f"this agent serves {sorted(agent.paths)}, not {path!r}")
    return state


def _view(state: PathState) -> PathView:
    if state.view is None:
        why = f": {state.error}" if state.error else ""
        raise Problem(
            503, "Not synced", f"{state.path} is not synced yet{why}", **{"Retry-After": "1"}
        )
    return state.view


def _headers(agent: Agent, state: PathState, view: PathView) -> dict[str, str]:
    age = state.age(agent.clock())
    return {
        "X-Kmsagent-Path-Version": str(view.path_version),
        "X-Kmsagent-Cache-Age": f"{age or 0.0:.3f}",
        "X-Kmsagent-Upstream": state.upstream,
        "Cache-Control": "no-store",
    }


def _json(doc: Any, headers: dict[str, str], status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE),  # a shell prompt on its line
        content_type="application/json",
        headers=headers,
    )


# One thread scans /proc for TCP peers, one lookup at a time: a burst of new connections must
# not take the agent's CPU from the reads it serves.
_LOOKUPS = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="peers")
# Per connection, the process at its other end: looked up once (on TCP it scans /proc).
_PEERS: weakref.WeakKeyDictionary[
    asyncio.BaseTransport, str | asyncio.Future[str | None] | None
] = weakref.WeakKeyDictionary()


def header_process(request: web.Request) -> str | None:
    """``X-App-Process-Id`` if sent (400 when malformed)."""
    pid = request.headers.get(PROCESS_HEADER)
    if pid is not None and not _PID_RE.fullmatch(pid):
        raise Problem(
            400, "Bad process id", f"{PROCESS_HEADER}: 1-64 letters, digits and . _ : @ -"
        )
    return pid


def note_read(agent: Agent, request: web.Request, path: str, read: dict[str, str]) -> None:
    """Note which versions the calling process read, for adoption: ``X-App-Process-Id``, else
    the connection's peer (``PID@START``, :mod:`kmsagent.peers`). A loopback TCP peer is looked
    up off the event loop, and its read noted once it is known."""
    state = agent.paths.get(path)
    if not read or state is None:
        return

    def record(pid: str | None) -> None:
        if pid is not None and agent.reads.record(path, pid, read, agent.clock()):
            state.report_changed.set()

    pid = header_process(request)
    transport = request.transport
    if pid is not None or transport is None:
        record(pid)
        return
    if transport in _PEERS:
        known = _PEERS[transport]
        if isinstance(known, asyncio.Future):  # a lookup of this connection is under way
            known.add_done_callback(lambda f: record(_found(f)))
        else:
            record(known)
        return
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family == socket.AF_UNIX:  # one getsockopt: no need to wait
        _PEERS[transport] = found = peer_process(sock)
        record(found)
        return
    lookup = asyncio.get_running_loop().run_in_executor(_LOOKUPS, peer_process, sock)
    _PEERS[transport] = lookup

    def done(future: asyncio.Future[str | None]) -> None:
        _PEERS[transport] = _found(future)

    lookup.add_done_callback(done)
    lookup.add_done_callback(lambda f: record(_found(f)))


def _found(future: asyncio.Future[str | None]) -> str | None:
    return None if future.cancelled() or future.exception() else future.result()


def _remember(request: web.Request, state: PathState, read: dict[str, str]) -> None:
    note_read(request.app[AGENT], request, state.path, read)


def _secret(view: PathView, name: str) -> Secret:
    secret = view.secrets.get(name)
    if secret is None:
        raise Problem(404, "Unknown secret", f"{view.path} has no secret {name!r}")
    return secret


# -- handlers ----------------------------------------------------------------------------------


async def all_secrets(request: web.Request) -> web.Response:
    state = _state(request)
    view = _view(state)  # taken once: the whole answer comes from this one generation
    doc = render_all(view)
    _remember(request, state, {n: s["version_id"] for n, s in doc["secrets"].items()})
    return _json(doc, _headers(request.app[AGENT], state, view))


async def one_secret(request: web.Request) -> web.Response:
    state = _state(request)
    view = _view(state)
    secret = _secret(view, request.match_info["name"])
    if secret.kind == "datakey":
        raise Problem(
            400, "Data key", f"{secret.name!r} is a data key: GET /v1/datakeys/{secret.name}"
        )
    stage = request.query.get("stage", "current")
    if stage not in STAGES:
        raise Problem(400, "Bad stage", f"stage must be one of {', '.join(STAGES)}")
    version = secret.at(stage)
    if version is None:
        raise Problem(404, "No such stage", f"{secret.name!r} has no {stage} version offered")
    doc = render_version(secret, version)
    _remember(request, state, {secret.name: version.version_id})
    return _json(doc, _headers(request.app[AGENT], state, view))


async def datakeys(request: web.Request) -> web.Response:
    state = _state(request)
    view = _view(state)
    secret = _secret(view, request.match_info["name"])
    if secret.kind != "datakey":
        raise Problem(
            400, "Not a data key", f"{secret.name!r} is a secret: GET /v1/secrets/{secret.name}"
        )
    doc = render_datakeys(secret)
    if secret.versions:
        _remember(request, state, {secret.name: secret.versions[0].version_id})
    return _json(doc, _headers(request.app[AGENT], state, view))


def _version_doc(agent: Agent, state: PathState, view: PathView) -> dict[str, Any]:
    age = state.age(agent.clock())
    return {
        "path": view.path,
        "path_version": view.path_version,
        "hash": view.hash,
        "cache_age_s": age,
        "upstream": state.upstream,
    }


async def version(request: web.Request) -> web.Response:
    state = _state(request)
    view = _view(state)
    agent = request.app[AGENT]
    return _json(_version_doc(agent, state, view), _headers(agent, state, view))


async def watch(request: web.Request) -> web.Response:
    """``?since=VERSION&timeout=S``: answer when the path's version differs from ``since``."""
    state = _state(request)
    try:
        since = int(request.query.get("since", "-1"))
        timeout = min(float(request.query.get("timeout", "60")), MAX_LOCAL_WATCH_S)
    except ValueError:
        raise Problem(400, "Bad watch", "since must be an integer, timeout seconds") from None
    if not timeout >= 0:
        raise Problem(400, "Bad watch", "timeout must be zero or more seconds")
    changed = state.changed
    view = state.view
    if view is None or view.path_version == since:
        state.local_watchers += 1
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            view = state.view
            headers = _headers(request.app[AGENT], state, view) if view else {}
            return web.Response(status=304, headers=headers)
        finally:
            state.local_watchers -= 1
        view = _view(state)
    agent = request.app[AGENT]
    return _json(_version_doc(agent, state, view), _headers(agent, state, view))


async def status(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    now = agent.clock()
    return _json(
        {
            "instance_id": agent.config.instance_id,
            "principal": agent.kmsd.principal,
            "credentials": agent.credentials_info(),
            "paths": {
                p: {
                    "path_version": s.view.path_version if s.view else None,
                    "upstream": s.upstream,
                    "error": s.error,
                    "cache_age_s": s.age(now),
                    "secrets": sorted(s.view.secrets) if s.view else [],
                }
                for p, s in sorted(agent.paths.items())
            },
            "stats": dict(agent.stats),
        },
        {"Cache-Control": "no-store"},
    )


async def healthz(request: web.Request) -> web.Response:
    """200 once every path has a view to serve (ready), 503 before."""
    agent = request.app[AGENT]
    waiting = sorted(p for p, s in agent.paths.items() if s.view is None)
    if waiting:
        raise Problem(503, "Not synced", f"waiting for {waiting}", **{"Retry-After": "1"})
    if agent.problems:
        raise Problem(503, "Degraded", "; ".join(f"{k}: {v}" for k, v in agent.problems.items()))
    return web.Response(text="ok\n")


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


def local_app(agent: Agent, *, token: str | None = None) -> web.Application:
    """The local API; with ``token``, the TCP variant that demands it on every request."""
    middlewares: list[Middleware] = [problems]
    if token is not None:
        middlewares.append(token_guard(token))
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)
    app[AGENT] = agent
    app[REGISTRY] = registry_for(agent)
    app.router.add_get("/v1/secrets", all_secrets)
    app.router.add_get("/v1/secrets/{name}", one_secret)
    app.router.add_get("/v1/datakeys/{name}", datakeys)
    app.router.add_get("/v1/version", version)
    app.router.add_get("/v1/watch", watch)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
