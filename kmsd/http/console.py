"""The console: one-time sign-in links and the live rotation dashboard (read-only HTML).

``kmsctl console`` asks for a link (``POST /v1/console/links``); opening it once
(``GET /ui/login?code=``) trades the code for a session cookie (HttpOnly, SameSite=Strict) and
redirects to the dashboard. The pages are server-rendered and stay readable without JavaScript;
a few lines of plain JS follow ``/ui/rotations/{id}/events`` (server-sent events: one request,
so one audit row, per open page) and redraw the gate bars, stragglers and history as they
change. The console only reads: commands go through the API (``kmsctl rotate ...``), so a
forged cross-site request can change nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import re
import secrets
from datetime import timedelta
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from kmsd.db import sessions
from kmsd.domain.access import decide
from kmsd.domain.bearer import CONSOLE_PREFIX
from kmsd.domain.signin import principal_from_arn
from kmsd.errors import Forbidden, Unauthenticated
from kmsd.http.access import authorize, caller_ip
from kmsd.http.audit import audit_now
from kmsd.http.common import CLIENT_IP, PRINCIPAL, json_response, principal
from kmsd.http.rotations import _rotation_id, _secret_path
from kmsd.keys import BINDINGS, CLOCK, HUB, POOL, ROTATIONS, SETTINGS

COOKIE = "kmsd_console"
LINK_TTL = timedelta(minutes=2)
CONSOLE_TTL = timedelta(hours=8)
EVENT_INTERVAL_S = 1.0
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
    # Only a page of this console (no scheme, no host): never an open redirect.
    target = request.query.get("next", "")
    if not re.fullmatch(r"/ui/rotations(/[0-9]+)?", target):
        target = "/ui/rotations"
    response = web.Response(status=303, headers={"Location": target})
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


# -- pages -------------------------------------------------------------------------------------

_ASSETS = resources.files("kmsd.http") / "assets"
_STYLE = (_ASSETS / "console.css").read_text()
_SCRIPT = (_ASSETS / "dashboard.js").read_text()


def _page(title: str, body: str, script: str = "") -> web.Response:
    doc = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        "<header><b>kmsd</b> console · <a href='/ui/rotations'>rotations</a></header>"
        f"<main>{body}</main>{script}</body></html>"
    )
    return web.Response(
        text=doc,
        content_type="text/html",
        headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; connect-src 'self'",
            "Cache-Control": "no-store",
            "X-Frame-Options": "DENY",
        },
    )


async def rotations_page(request: web.Request) -> web.Response:
    who = principal(request)
    bindings = await request.app[BINDINGS].all()
    settings = request.app[SETTINGS]
    rows = [
        r
        for r in await request.app[ROTATIONS].list(None, active_only=False, limit=200)
        if decide(
            who.arn,
            r["path"],
            "view",
            ip=caller_ip(request),
            bindings=bindings,
            admins=settings.admins,
        ).allowed
    ]
    lines = "".join(
        f"<tr><td><a href='/ui/rotations/{r['id']}'>#{r['id']}</a></td>"
        f"<td>{html.escape(r['path'])}/<b>{html.escape(r['name'])}</b></td>"
        f"<td>{html.escape(r['phase'])}{' (paused)' if r['paused'] else ''}</td>"
        f"<td>{'leaked' if r['leaked'] else ''}</td>"
        f"<td>{html.escape(r['started_at'][:19])}</td></tr>"
        for r in rows
    )
    return _page(
        "Rotations",
        "<h1>Rotations</h1><div class=card><table><tr><th>id</th><th>secret</th><th>phase</th>"
        f"<th></th><th>started</th></tr>{lines or '<tr><td colspan=5>none yet</td></tr>'}"
        "</table></div>",
    )


async def rotation_page(request: web.Request) -> web.Response:
    rotation_id = _rotation_id(request)
    await authorize(request, "view", await _secret_path(request, rotation_id))
    doc = await request.app[ROTATIONS].describe(rotation_id)
    script = f"<script>\nconst initial = {_json_for_script(doc)};\n{_SCRIPT}\n</script>"
    return _page(f"Rotation {rotation_id}", f"<div id=view>{render(doc)}</div>", script)


async def rotation_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the rotation's JSON each time it changes, until it is final."""
    rotation_id = _rotation_id(request)
    path = await _secret_path(request, rotation_id)
    await authorize(request, "view", path)
    await audit_now(request)  # the stream may stay open for the whole rotation
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    last = b""
    while True:
        try:
            # Access is decided again for every event (bindings are cached and invalidated by
            # NOTIFY, so this costs no query): a viewer whose binding is revoked stops seeing.
            await authorize(request, "view", path)
        except Forbidden:
            await response.write(b"event: end\ndata: access revoked\n\n")
            break
        doc = await request.app[ROTATIONS].describe(rotation_id)
        body = orjson.dumps(doc)
        if body != last:
            await response.write(b"data: " + body + b"\n\n")
            last = body
        if doc["phase"] in ("done", "aborted", "rolled_back") and not doc["labels_pending"]:
            break
        await asyncio.sleep(EVENT_INTERVAL_S)
        if request.app[HUB].closing:
            break  # shutting down: the browser's EventSource reconnects to another replica
    await response.write_eof()
    return response


def _json_for_script(doc: dict[str, Any]) -> str:
    # Safe inside <script>: no "</" can close the element, no U+2028 breaks the line.
    text = orjson.dumps(doc).decode()
    return text.replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render(doc: dict[str, Any]) -> str:
    """The dashboard's HTML for a rotation document (the same drawing the JS redoes)."""
    e = html.escape
    phase = doc["phase"]
    steps = ["pending", "promoted", "done"]
    bad = phase in ("aborted", "rolled_back")
    phases = "".join(
        f"<span class='phase{' on' if s == phase else ''}'>{s}</span>" for s in steps
    ) + (f"<span class='phase bad'>{e(phase)}</span>" if bad else "")
    flags = " ".join(
        f"<span class=tag>{f}</span>"
        for f, on in (
            (doc["mode"], True),
            ("paused", doc["paused"]),
            ("leaked", doc["leaked"]),
            ("gate timed out", doc["timed_out"]),
            ("SM labels pending", doc["labels_pending"]),
        )
        if on
    )
    gate = doc.get("gate")
    gate_html = "<p>No gate: the rotation is " + e(phase) + ".</p>"
    if gate:
        c = gate["counts"]
        total = max(1, c["held"] + c["waiting"] + c["stale"])
        width = {k: 100 * c[k] / total for k in ("held", "waiting", "stale")}
        target = "hold the pending version" if gate["gate"] == 1 else "serve the new current"
        who = "owner instances" if gate["gate"] == 1 else "owner and referencer instances"
        gate_html = (
            f"<h2>Gate {gate['gate']}: {who} {target}</h2>"
            f"<p id=gate-count><b>{c['held']} / {c['live']}</b> live instances hold "
            f"<code>{e(gate['target_version'])}</code> · {c['stale']} stale"
            f"{' · <b>met</b>' if gate['met'] else ''}</p>"
            "<div class=bar>"
            + "".join(
                f"<div class={k} style='width:{width[k]:.1f}%'></div>"
                for k in ("held", "waiting", "stale")
            )
            + "</div>"
            + _instances("Waiting for", gate["waiting"])
            + _instances("Stale (not counted)", gate["stale"])
            + _instances("Holding", gate["held"])
        )
    versions = "".join(
        f"<tr><td><code>{e(v['version_id'])}</code></td><td>{e(v['stage'])}</td>"
        f"<td>{e(v['role'] or '')}</td></tr>"
        for v in doc["versions"]
    )
    events = "".join(
        f"<tr><td>{e(ev['at'][:19])}</td><td>{e(ev['action'])}"
        f"{_FORCED if ev['forced'] else ''}</td>"
        f"<td>{e(ev['phase'])}</td><td>{e(ev['actor'])}</td></tr>"
        for ev in doc["events"]
    )
    return (
        f"<h1>Rotation #{doc['id']}: {e(doc['path'])}/<b>{e(doc['name'])}</b></h1>"
        f"<div class=phases id=phases>{phases}</div><div>{flags}</div>"
        f"<div class=card id=gate>{gate_html}</div>"
        f"<div class=card><h2>Versions</h2><table>{versions}</table></div>"
        f"<div class=card><h2>History</h2><table id=history>{events}</table></div>"
    )


_FORCED = ' <span class="tag forced">forced</span>'


def _instances(title: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    e = html.escape
    body = "".join(
        f"<tr><td>{e(r['instance_id'])}</td><td>{e(r['path'])}</td><td>{e(r['role'])}</td>"
        f"<td>{e(r['ip'])}</td><td><code>{e(str(r['current']))}</code></td>"
        f"<td>{e(r['last_seen'][:19])}</td>"
        f"<td>{e(', '.join(f'{p}: {v}' for p, v in r['processes'].items()))}</td></tr>"
        for r in rows
    )
    return (
        f"<h3>{e(title)} ({len(rows)})</h3><table class=instances><tr><th>instance</th>"
        "<th>path</th><th>role</th><th>ip</th><th>serves</th><th>last seen</th>"
        f"<th>processes</th></tr>{body}</table>"
    )


def setup_console_routes(app: web.Application) -> None:
    app.router.add_post("/v1/console/links", create_link)
    app.router.add_get("/ui/login", login)
    app.router.add_get("/ui/rotations", rotations_page)
    app.router.add_get("/ui/rotations/{id}", rotation_page)
    app.router.add_get("/ui/rotations/{id}/events", rotation_events)
