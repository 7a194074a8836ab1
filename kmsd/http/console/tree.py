"""The console's tree pages: the tree itself, and each node with its effective set.

Both read PostgreSQL's metadata only (kmsd never holds a value) and show only what the viewer
may ``view``; a node the viewer may not see is a 404, the API's answer to a missing one, so
the page is no existence oracle. The forms on a node page appear only to who may ``edit`` it,
and each calls the API itself (``assets/console.js``), where access is decided again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kmsd.db import store
from kmsd.domain.names import NodePath, kind_of_depth
from kmsd.domain.profile import USES
from kmsd.domain.tree import resolve
from kmsd.errors import NotFound
from kmsd.http.console.openapi import page as doc_page
from kmsd.http.console.pages import page, viewer
from kmsd.http.openapi_ops import node_param
from kmsd.http.openapi_schemas import Schema
from kmsd.keys import POOL

# Every node with its own secrets and references counted: one query for the whole tree.
TREE = """
SELECT n.path, n.depth,
       (SELECT count(*) FROM secrets s WHERE s.node_id = n.id) AS secrets,
       (SELECT count(*) FROM refs r WHERE r.node_id = n.id) AS refs
FROM nodes n ORDER BY n.path
"""
# Who references this node's secrets (in other applications, under their own local names).
REFS_IN = """
SELECT rn.path, r.local_name, s.name FROM refs r
JOIN secrets s ON s.id = r.secret_id JOIN nodes rn ON rn.id = r.node_id
WHERE s.node_id = $1 ORDER BY s.name, rn.path, r.local_name
"""
SHARES_OUT = """
SELECT s.name, sh.app_path, sh.created_by, sh.created_at FROM shares sh
JOIN secrets s ON s.id = sh.secret_id
WHERE s.node_id = $1 ORDER BY s.name, sh.app_path
"""
# What other applications share with this node's application: what a reference may point to.
SHARED_WITH_APP = """
SELECT n.path || '/' || s.name AS ref FROM shares sh
JOIN secrets s ON s.id = sh.secret_id JOIN nodes n ON n.id = s.node_id
WHERE sh.app_path = $1 ORDER BY 1
"""


@dataclass
class Branch:
    """A namespace or an application on the tree page, with what hangs below it."""

    path: str
    secrets: int = 0
    refs: int = 0
    visible: bool = False
    below: list[Any] = field(default_factory=list)


def tree_of(rows: list[dict[str, Any]]) -> list[Branch]:
    """Group visible node rows (sorted by path) into namespaces, applications and nodes."""
    namespaces: dict[str, Branch] = {}
    apps: dict[str, Branch] = {}
    for row in rows:
        segments = row["path"].split("/")
        ns = namespaces.setdefault(segments[0], Branch(segments[0]))
        if len(segments) == 1:
            target = ns
        else:
            app_path = "/".join(segments[:2])
            if app_path not in apps:
                apps[app_path] = Branch(app_path)
                ns.below.append(apps[app_path])
            target = apps[app_path]
            if len(segments) > 2:
                target.below.append(row)
                continue
        target.secrets, target.refs, target.visible = row["secrets"], row["refs"], True
    return list(namespaces.values())


async def tree_page(request: web.Request) -> web.Response:
    who = await viewer(request)
    rows = [
        {**dict(r), "level": kind_of_depth(r["depth"])}
        for r in await request.app[POOL].fetch(TREE)
        if who.may("view", r["path"])
    ]
    return await page(request, "tree.html", "tree", who=who, tree=tree_of(rows))


async def node_page(request: web.Request) -> web.Response:
    raw = request.match_info["path"]
    path = NodePath.parse(raw)
    who = await viewer(request)
    if not who.may("view", str(path)):
        raise NotFound(f"node {str(path)!r} does not exist")  # what a missing node answers
    # One snapshot: the effective set, references and shares agree with each other.
    async with (
        request.app[POOL].acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        node = await store.get_node(conn, path)
        own = (await store.load_secrets(conn, [node]))[0]
        children = await conn.fetch(store.CHILDREN, node["id"])
        refs_in = await conn.fetch(REFS_IN, node["id"])
        shares = await conn.fetch(SHARES_OUT, node["id"])
        effective: list[Any] = []
        shared_with: list[str] = []
        if not path.is_namespace:
            _, chain = await store.load_chain(conn, path)
            effective = resolve(chain)
            shared_with = [
                r["ref"] for r in await conn.fetch(SHARED_WITH_APP, str(path.application))
            ]
    hidden_refs = sum(1 for r in refs_in if not who.may("view", r["path"]))
    return await page(
        request,
        "node.html",
        "tree",
        who=who,
        path=str(path),
        level=kind_of_depth(path.depth),
        crumbs=[str(NodePath(path.segments[:i])) for i in range(1, path.depth)],
        children=[c["path"] for c in children if who.may("view", c["path"])],
        own=own,
        effective=effective,
        refs_in=[r for r in refs_in if who.may("view", r["path"])],
        hidden_refs=hidden_refs,
        shares=shares,
        shared_with=shared_with,
        can_edit=who.may("edit", str(path)),
        uses=USES,
    )


def routes(app: web.Application) -> None:
    """Add this module's pages to ``app``."""
    app.router.add_get("/ui/tree", tree_page)
    app.router.add_get("/ui/node/{path:.+}", node_page)


def openapi_paths() -> dict[str, dict[str, Schema]]:
    """This module's pages in the OpenAPI document."""
    return {
        "/ui/tree": {
            "get": doc_page(
                "console_tree", "The tree: namespaces, applications and nodes one may view"
            )
        },
        "/ui/node/{path}": {
            "get": doc_page(
                "console_node",
                "A node: its secrets, effective set with overrides, references and shares",
                (node_param("prod/payments/us-east-1"),),
                (404,),
            )
        },
    }
