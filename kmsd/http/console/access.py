"""The access page: who may view, edit and administer a subtree, and what its hosts need.

``/ui/access?path=P`` lists the bindings ``GET /v1/bindings?path=P`` lists (the same filter and
the same ``view`` check), with grant and revoke forms that call ``POST /v1/bindings`` and
``DELETE /v1/bindings/{id}`` themselves, shown only to who may administer the prefix (the API
decides again). For an application it adds the IAM policy its hosts need now and whether the
policy last fetched through the API (``kmsctl iam-policy app``) still covers it: what
``GET /v1/iam-policy/drift/{path}`` answers, by the same functions.

The page computes the policy without recording a fetch: only a fetch through the API is
presumed applied, so opening a page never silences a drift warning.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from kmsd.domain.access import PERMISSIONS, ROOT, covers
from kmsd.domain.iam import DEFAULT_SHAPE, NothingToGrant
from kmsd.domain.names import NodePath
from kmsd.http import iam
from kmsd.http.access import authorize
from kmsd.http.common import AUDIT_TARGET
from kmsd.http.console.openapi import page as doc_page
from kmsd.http.console.pages import page, viewer
from kmsd.http.openapi_ops import param
from kmsd.http.openapi_schemas import Schema
from kmsd.keys import BINDINGS, POOL


async def access_page(request: web.Request) -> web.Response:
    who = await viewer(request)
    raw = request.query.get("path", "")
    prefix = ROOT if raw in (ROOT, "") else str(NodePath.parse(raw))
    mine = sorted({b.prefix for b in who.bindings if who.may("view", b.prefix)})
    if not raw and not who.may("view", ROOT) and mine:
        prefix = mine[0]  # the nav link: the first subtree this person may see, not a refusal
    request[AUDIT_TARGET] = prefix  # so that a search of the trail by path finds this view
    await authorize(request, "view", prefix)
    found = [
        b
        for b in await request.app[BINDINGS].all()
        if covers(prefix, b.prefix) or (covers(b.prefix, prefix) and b.prefix != ROOT)
    ]
    found.sort(key=lambda b: (b.prefix, b.permission, b.principal))
    rows = [
        {
            "id": b.id,
            "principal": b.principal,
            "path": b.prefix,
            "permission": b.permission,
            "cidrs": [str(c) for c in b.cidrs],
            "inherited": b.prefix != prefix and covers(b.prefix, prefix),
            "can_revoke": who.may("admin", b.prefix),
        }
        for b in found
    ]
    policy = None
    drift = None
    if prefix != ROOT and not NodePath.parse(prefix).is_namespace:
        policy, drift = await _iam_of(request, NodePath.parse(prefix))
    return await page(
        request,
        "access.html",
        "access",
        who=who,
        prefix=prefix,
        mine=[p for p in mine if p != prefix],
        bindings=rows,
        permissions=PERMISSIONS,
        can_grant=who.may("admin", prefix),
        policy=policy,
        drift=drift,
    )


async def _iam_of(request: web.Request, path: NodePath) -> tuple[str | None, dict[str, Any] | None]:
    """The policy ``path``'s hosts need now (default shape) and its drift from the last fetch."""
    node_id = await request.app[POOL].fetchval("SELECT id FROM nodes WHERE path = $1", str(path))
    if node_id is None:
        return None, None
    try:
        needed: dict[str, Any] | None = await iam.needed_policy(request, path, DEFAULT_SHAPE, [])
    except NothingToGrant:
        needed = None
    shown = orjson.dumps(needed, option=orjson.OPT_INDENT_2).decode() if needed else None
    return shown, await iam.drift_of(request, path, node_id)


def routes(app: web.Application) -> None:
    """Add this module's pages to ``app``."""
    app.router.add_get("/ui/access", access_page)


def openapi_paths() -> dict[str, dict[str, Schema]]:
    """This module's pages in the OpenAPI document."""
    return {
        "/ui/access": {
            "get": doc_page(
                "console_access",
                "Bindings of a subtree, grant and revoke; an application's IAM policy and drift",
                (param("path", "query", {"type": "string"}, "a path prefix, or * (the default)"),),
                (400, 403),
            )
        }
    }
