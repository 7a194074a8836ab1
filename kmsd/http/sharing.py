"""Sharing a secret with another application, and references to shared secrets.

The owner shares ``PATH/NAME`` with ``NAMESPACE/APP``; that application may then reference it
anywhere in its own tree under a local name. A reference behaves like a secret of its node
(the same override rules) and offers only the current version. Any change to the shared
secret bumps every referencing node, so the referencing paths' watchers wake.
"""

from __future__ import annotations

from aiohttp import web

from kmsd.db import Conn, store
from kmsd.db.changes import record_change
from kmsd.domain.names import NodePath, check_segment
from kmsd.domain.signin import Principal
from kmsd.errors import Conflict, InvalidInput, NotFound
from kmsd.http.access import authorize, may
from kmsd.http.common import AUDIT_DENIED, AUDIT_TARGET, flag, json_body, json_response
from kmsd.keys import POOL

INSERT_SHARE = """
INSERT INTO shares (secret_id, app_path, created_by) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
"""
SHARED_WITH = """
SELECT s.id FROM secrets s JOIN nodes n ON n.id = s.node_id
JOIN shares sh ON sh.secret_id = s.id AND sh.app_path = $3
WHERE n.path = $1 AND s.name = $2
"""
REFS_FROM_APP = """
SELECT r.id, n.id AS node_id, n.path FROM refs r JOIN nodes n ON n.id = r.node_id
WHERE r.secret_id = $1 AND (n.path = $2 OR n.path LIKE $3)
"""
DELETE_SHARE = "DELETE FROM shares WHERE secret_id = $1 AND app_path = $2"
DELETE_REF = "DELETE FROM refs WHERE id = $1"
INSERT_REF = """
INSERT INTO refs (node_id, local_name, secret_id, created_by) VALUES ($1, $2, $3, $4)
ON CONFLICT (node_id, local_name) DO UPDATE SET secret_id = EXCLUDED.secret_id
"""
GET_REF = "SELECT id FROM refs WHERE node_id = $1 AND local_name = $2"


def _secret_ref(raw: object, what: str) -> tuple[NodePath, str]:
    if not isinstance(raw, str) or "/" not in raw:
        raise InvalidInput(f"{what} must be PATH/NAME of a secret")
    path, _, name = raw.rpartition("/")
    return NodePath.parse(path), check_segment(name, "secret name")


def _app(raw: object) -> NodePath:
    if not isinstance(raw, str):
        raise InvalidInput("'to' must be NAMESPACE/APP")
    app = NodePath.parse(raw)
    if app.depth != 2:
        raise InvalidInput("'to' must name an application: NAMESPACE/APP")
    return app


async def _secret_row(conn: Conn, path: NodePath, name: str) -> tuple[int, int]:
    node = await store.get_node(conn, path)
    row = await store.get_secret(conn, node["id"], name)
    if row is None:
        raise NotFound(f"secret {name!r} does not exist at {str(path)!r}")
    return node["id"], row["id"]


async def _authorize_owner(request: web.Request, path: NodePath, name: str) -> Principal:
    """Edit on the shared secret's node; who cannot even view it learns nothing of it (the
    answer a missing secret gets)."""
    if not await may(request, "view", str(path)):
        request[AUDIT_DENIED] = True
        raise NotFound(f"secret {name!r} does not exist at {str(path)!r}")
    return await authorize(request, "edit", str(path))


async def share(request: web.Request) -> web.Response:
    doc = await json_body(request, allowed={"secret", "to"})
    path, name = _secret_ref(doc.get("secret"), "'secret'")
    app = _app(doc.get("to"))
    request[AUDIT_TARGET] = f"{path}/{name}"
    who = await _authorize_owner(request, path, name)
    if path.application == app:
        raise InvalidInput("a secret is already visible to its own application")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await store.get_node(conn, app)
        _, secret_id = await _secret_row(conn, path, name)
        await conn.execute(INSERT_SHARE, secret_id, str(app), who.arn)
    return json_response({"secret": f"{path}/{name}", "to": str(app)}, status=201)


async def unshare(request: web.Request) -> web.Response:
    path, name = _secret_ref(request.query.get("secret"), "'secret'")
    app = _app(request.query.get("to"))
    request[AUDIT_TARGET] = f"{path}/{name}"
    await _authorize_owner(request, path, name)
    remove_refs = flag(request, "remove_refs")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        _, secret_id = await _secret_row(conn, path, name)
        refs = await conn.fetch(REFS_FROM_APP, secret_id, str(app), store.below_pattern(str(app)))
        if refs and not remove_refs:
            raise Conflict(
                f"{len(refs)} reference(s) in {str(app)!r} use this secret; remove them first "
                "or unshare with remove_refs=true",
                references=[r["path"] for r in refs],
            )
        for ref in refs:
            await conn.execute(DELETE_REF, ref["id"])
            await record_change(conn, ref["path"], ref["node_id"])
        await conn.execute(DELETE_SHARE, secret_id, str(app))
    return json_response({"secret": f"{path}/{name}", "to": str(app), "removed_refs": len(refs)})


async def put_ref(request: web.Request) -> web.Response:
    path, local = _split(request.match_info["ref"])
    who = await authorize(request, "edit", str(path))
    doc = await json_body(request, allowed={"target"})
    target_path, target_name = _secret_ref(doc.get("target"), "'target'")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        node = await store.get_node(conn, path, for_update=True)
        if node["depth"] < 2:
            raise InvalidInput("references attach to an application or a node below it")
        # To this caller, a secret of another application that is not shared with its own is
        # exactly a secret that does not exist: one answer, so no existence oracle.
        secret_id = await conn.fetchval(
            SHARED_WITH, str(target_path), target_name, str(path.application)
        )
        if secret_id is None:
            raise NotFound(
                f"no secret {target_path}/{target_name} is shared with "
                f"{str(path.application)!r} (its owner shares it with: kmsctl share)"
            )
        if await store.get_secret(conn, node["id"], local) is not None:
            raise Conflict(f"{str(path)!r} already has a secret named {local!r}")
        await conn.execute(INSERT_REF, node["id"], local, secret_id, who.arn)
        await record_change(conn, str(path), node["id"])
    return json_response(
        {"path": str(path), "name": local, "target": f"{target_path}/{target_name}"}, status=201
    )


async def delete_ref(request: web.Request) -> web.Response:
    path, local = _split(request.match_info["ref"])
    await authorize(request, "edit", str(path))
    async with request.app[POOL].acquire() as conn, conn.transaction():
        node = await store.get_node(conn, path, for_update=True)
        ref_id = await conn.fetchval(GET_REF, node["id"], local)
        if ref_id is None:
            raise NotFound(f"no reference named {local!r} at {str(path)!r}")
        await conn.execute(DELETE_REF, ref_id)
        await record_change(conn, str(path), node["id"])
    return json_response({"path": str(path), "name": local, "deleted": True})


def _split(ref: str) -> tuple[NodePath, str]:
    path, _, name = ref.rpartition("/")
    if not path:
        raise InvalidInput("expected PATH/LOCAL_NAME")
    return NodePath.parse(path), check_segment(name, "reference name")


def setup_sharing_routes(app: web.Application) -> None:
    app.router.add_post("/v1/shares", share)
    app.router.add_delete("/v1/shares", unshare)
    app.router.add_put("/v1/refs/{ref:.+}", put_ref)
    app.router.add_delete("/v1/refs/{ref:.+}", delete_ref)
