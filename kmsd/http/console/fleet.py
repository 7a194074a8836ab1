"""The fleet page: every live instance across the tree, by application.

For each node that instances report on and the viewer may ``view``, the page shows what
``GET /v1/adoption/{path}`` answers: each instance's version of each secret, its processes'
reads, stale instances and observers apart. Instances a running rotation's gate waits for
(the stragglers) are marked, with the rotation they hold up.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kmsd.domain.names import NodePath
from kmsd.http.console.openapi import page as doc_page
from kmsd.http.console.pages import page, viewer
from kmsd.http.openapi_schemas import Schema
from kmsd.http.watch import adoption_of
from kmsd.keys import ADOPTION, POOL, ROTATIONS

REPORTED_PATHS = "SELECT DISTINCT path FROM adoption ORDER BY path"


async def fleet_page(request: web.Request) -> web.Response:
    who = await viewer(request)
    app = request.app
    await app[ADOPTION].flush()  # this replica's latest reports, then everyone's
    stragglers: dict[tuple[str, str], list[int]] = {}
    for rot in await app[ROTATIONS].list(None, active_only=True, limit=200):
        if not who.may("view", rot["path"]):
            continue
        gate = (await app[ROTATIONS].describe(rot["id"]))["gate"]
        for r in gate["waiting"] if gate else []:
            stragglers.setdefault((r["path"], r["instance_id"]), []).append(rot["id"])
    applications: dict[str, list[dict[str, Any]]] = {}
    for record in await app[POOL].fetch(REPORTED_PATHS):
        path = NodePath.parse(record["path"])
        if not who.may("view", str(path)):
            continue
        doc = await _adoption(request, path)
        if doc is None:
            continue  # the node went away since it was reported on
        for row in (*doc["instances"], *doc["observers"]):
            row["waited_by"] = stragglers.get((str(path), row["instance_id"]), [])
        name = "/".join(path.segments[:2])
        applications.setdefault(name, []).append(doc)
    return await page(
        request,
        "fleet.html",
        "fleet",
        who=who,
        applications=applications,
        stragglers=sum(len(v) > 0 for v in stragglers.values()),
    )


async def _adoption(request: web.Request, path: NodePath) -> dict[str, Any] | None:
    """What ``GET /v1/adoption/{path}`` answers, each instance's held versions and the secrets
    it is behind on added (None: no such node)."""
    found = await adoption_of(request.app, path)
    if found is None:
        return None
    held = {r.instance_id: r.held for r in found.reports}
    current = {
        s["name"]: [v["version_id"] for v in s.get("versions", []) if v["stage"] == "current"]
        for s in found.secrets
    }
    for row in found.doc["instances"]:
        row["held"] = held.get(row["instance_id"], {})
        row["behind"] = sorted(
            name for name, version in row["held"].items() if version not in current.get(name, [])
        )
    return found.doc


def routes(app: web.Application) -> None:
    """Add this module's pages to ``app``."""
    app.router.add_get("/ui/fleet", fleet_page)


def openapi_paths() -> dict[str, dict[str, Schema]]:
    """This module's pages in the OpenAPI document."""
    return {
        "/ui/fleet": {
            "get": doc_page(
                "console_fleet",
                "Every application's live instances: versions served, stale ones, stragglers",
            )
        }
    }
