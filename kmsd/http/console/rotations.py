"""The rotations pages: the list, and each rotation's live dashboard with its controls.

The dashboard is server-rendered (``rotation_view.html``) and stays readable without
JavaScript. ``/ui/rotations/{id}/events`` is a server-sent event stream that sends the same
fragment, rendered again, each time the rotation changes (one request, so one audit row, per
open page); ``dashboard.js`` swaps it in. The buttons call the rotation API with the console's
CSRF token, through the same handlers, access checks and audit rows as kmsctl.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from kmsd.domain import rotation as machine
from kmsd.errors import Forbidden
from kmsd.http.access import authorize
from kmsd.http.audit import audit_now
from kmsd.http.console.pages import page, viewer
from kmsd.http.rotations import _rotation_id, _secret_path
from kmsd.keys import HUB, ROTATIONS

EVENT_INTERVAL_S = 1.0
FINAL = ("done", "aborted", "rolled_back")


async def rotations_page(request: web.Request) -> web.Response:
    who = await viewer(request)
    rows = [
        r
        for r in await request.app[ROTATIONS].list(None, active_only=False, limit=200)
        if who.may("view", r["path"])
    ]
    return await page(
        request,
        "rotations.html",
        "rotations",
        who=who,
        rotations=rows,
        leaked_minutes=int(machine.LEAKED_GATE_TIMEOUT.total_seconds() // 60),
    )


async def rotation_page(request: web.Request) -> web.Response:
    rotation_id = _rotation_id(request)
    path = await _secret_path(request, rotation_id)
    await authorize(request, "view", path)
    who = await viewer(request)
    doc = shown(await request.app[ROTATIONS].describe(rotation_id))
    return await page(
        request, "rotation.html", "rotations", who=who, doc=doc, can_change=who.may("rotate", path)
    )


def shown(doc: dict[str, Any]) -> dict[str, Any]:
    """The rotation document with what the dashboard adds: the commands that apply, with what
    each will do. (The elapsed time is counted by the page: a fragment that changed every second
    would be sent every second to every open dashboard.)"""
    roles = {v["role"]: v["version_id"] for v in doc["versions"] if v.get("role")}
    out = dict(doc)
    out["commands"] = machine.offered(
        doc["phase"], doc["paused"], roles.get("new", "the new version"), roles.get("old", "")
    )
    out.setdefault("timeline", [])
    return out


def fragment(request: web.Request, doc: dict[str, Any], can_change: bool) -> str:
    """The dashboard's HTML for a rotation document (also what each event carries)."""
    env = aiohttp_jinja2.get_env(request.app)
    return env.get_template("rotation_view.html").render(doc=doc, can_change=can_change)


def event(text: str) -> bytes:
    """One server-sent event carrying ``text`` (each line its own ``data:`` field)."""
    return "".join(f"data: {line}\n" for line in text.splitlines() or [""]).encode() + b"\n"


async def rotation_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the dashboard fragment each time the rotation changes, until it is
    final."""
    rotation_id = _rotation_id(request)
    path = await _secret_path(request, rotation_id)
    await authorize(request, "view", path)
    await audit_now(request)  # the stream may stay open for the whole rotation
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    last = ""
    while True:
        try:
            # Access is decided again for every event (bindings are cached and invalidated by
            # NOTIFY, so this costs no query): a viewer whose binding is revoked stops seeing.
            await authorize(request, "view", path)
        except Forbidden:
            await response.write(b"event: end\ndata: access revoked\n\n")
            break
        doc = await request.app[ROTATIONS].describe(rotation_id)
        who = await viewer(request)
        text = fragment(request, shown(doc), who.may("rotate", path))
        if text != last:
            await response.write(event(text))
            last = text
        if doc["phase"] in FINAL and not doc["labels_pending"]:
            await response.write(b"event: end\ndata: final\n\n")  # no reconnect wanted
            break
        await asyncio.sleep(EVENT_INTERVAL_S)
        if request.app[HUB].closing:
            break  # shutting down: the browser's EventSource reconnects to another replica
    await response.write_eof()
    return response
