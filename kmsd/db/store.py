"""Queries on the tree, secret metadata and sessions.

Every statement is a named constant with ``$n`` parameters. Functions take a connection so the
caller decides the transaction; none of them ever sees a secret value.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from kmsd.db import Conn
from kmsd.db.changes import record_change
from kmsd.domain.names import NodePath, kind_of_depth
from kmsd.domain.tree import NodeSecrets, RefMeta, SecretMeta, SecretVersion
from kmsd.errors import Conflict, InvalidInput, NotFound

GET_NODE = "SELECT id, path, depth, changed_seq FROM nodes WHERE path = $1"
GET_NODE_FOR_UPDATE = GET_NODE + " FOR UPDATE"
GET_NODES = "SELECT id, path, depth, changed_seq FROM nodes WHERE path = ANY($1::text[])"
INSERT_NODE = """
INSERT INTO nodes (parent_id, path, name, depth, created_by)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (path) DO NOTHING
RETURNING id
"""
CHILDREN = "SELECT name, path, depth FROM nodes WHERE parent_id = $1 ORDER BY name"
SUBTREE_COUNTS = """
SELECT (SELECT count(*) FROM nodes WHERE parent_id = $1) AS children,
       (SELECT count(*) FROM secrets WHERE node_id = $1) AS secrets
"""
SUBTREE_SECRETS = """
SELECT s.sm_name FROM secrets s JOIN nodes n ON n.id = s.node_id
WHERE (n.path = $1 OR n.path LIKE $2) AND s.kind <> 'datakey'
"""
SUBTREE_REFERENCED = """
SELECT count(DISTINCT s.id) FROM secrets s JOIN nodes n ON n.id = s.node_id
JOIN refs r ON r.secret_id = s.id
WHERE (n.path = $1 OR n.path LIKE $2) AND r.node_id NOT IN (
    SELECT id FROM nodes WHERE path = $1 OR path LIKE $2)
"""
# Locks the whole subtree, so that no write can slip a secret into it while it is deleted.
LOCK_SUBTREE = "SELECT id FROM nodes WHERE path = $1 OR path LIKE $2 FOR UPDATE"
DELETE_NODE = "DELETE FROM nodes WHERE id = $1"
SECRETS_OF_NODES = """
SELECT s.id AS group_id, s.node_id, s.name, s.kind, s.sm_arn, s.description, s.expires_at,
       s.cmk_arn, v.version_id, v.stage, v.created_at AS version_created_at, v.ciphertext
FROM secrets s JOIN secret_versions v ON v.secret_id = s.id
WHERE s.node_id = ANY($1::bigint[])
ORDER BY s.node_id, s.name, v.created_at
"""
# A reference's target, one row per target version, grouped by the local name.
REFS_OF_NODES = """
SELECT r.node_id, r.local_name AS group_id, tn.path || '/' || t.name AS target_ref,
       t.name, t.kind, t.sm_arn, t.description, t.expires_at, t.cmk_arn,
       v.version_id, v.stage, v.created_at AS version_created_at, v.ciphertext
FROM refs r JOIN secrets t ON t.id = r.secret_id JOIN nodes tn ON tn.id = t.node_id
JOIN secret_versions v ON v.secret_id = t.id
WHERE r.node_id = ANY($1::bigint[])
ORDER BY r.node_id, r.local_name, v.created_at
"""
REF_ON_NODE = "SELECT 1 FROM refs WHERE node_id = $1 AND local_name = $2"
IS_REFERENCED = "SELECT 1 FROM refs WHERE secret_id = $1 LIMIT 1"
GET_SECRET = """
SELECT s.id, s.name, s.kind, s.sm_name, s.sm_arn, s.description, s.tags::text AS tags,
       s.created_by, s.created_at, s.updated_at, s.expires_at, s.spec::text AS spec,
       s.public_key, s.cmk_arn, s.period_days
FROM secrets s WHERE s.node_id = $1 AND s.name = $2
"""
SECRET_VERSIONS = """
SELECT version_id, stage, created_by, created_at FROM secret_versions
WHERE secret_id = $1 ORDER BY created_at DESC, version_id
"""
DELETE_SECRET = "DELETE FROM secrets WHERE id = $1"
INSERT_OUTBOX = """
INSERT INTO sm_outbox (op, sm_name, version_id, intent) VALUES ($1, $2, $3, $4::jsonb)
RETURNING id
"""
DELETE_OUTBOX = "DELETE FROM sm_outbox WHERE id = $1"


def below_pattern(path: str) -> str:
    """A LIKE pattern for the paths strictly below ``path``.

    ``_`` is legal in names and a LIKE wildcard: unescaped, ``prod/my_app/%`` would also match
    ``prod/my-app/...``, another application.
    """
    escaped = path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}/%"


def node_row_to_dict(row: asyncpg.Record) -> dict[str, Any]:
    return {"path": row["path"], "level": kind_of_depth(row["depth"])}


async def create_node(conn: Conn, path: NodePath, created_by: str, *, parents: bool) -> list[str]:
    """Create ``path`` (and, with ``parents``, its missing ancestors); return created paths."""
    created: list[str] = []
    parent_id: int | None = None
    chain = [NodePath(path.segments[:i]) for i in range(1, path.depth + 1)]
    for i, node in enumerate(chain):
        row = await conn.fetchrow(GET_NODE, str(node))
        if row is not None:
            parent_id = row["id"]
            if node == path:
                return created
            continue
        if node != path and not parents:
            raise NotFound(
                f"parent {str(node)!r} does not exist: create it first, or pass parents=true"
            )
        new_id = await conn.fetchval(
            INSERT_NODE, parent_id, str(node), node.segments[-1], i + 1, created_by
        )
        if new_id is None:  # created concurrently by another request
            new_id = await conn.fetchval("SELECT id FROM nodes WHERE path = $1", str(node))
        parent_id = new_id
        created.append(str(node))
    if created:
        # Tell watchers' caches that these paths exist now (a re-created path may be cached
        # as gone); one change at the top-most new node covers all of them.
        await record_change(conn, created[0])
    return created


async def get_node(conn: Conn, path: NodePath, *, for_update: bool = False) -> asyncpg.Record:
    """Return the node row or raise NotFound."""
    row = await conn.fetchrow(GET_NODE_FOR_UPDATE if for_update else GET_NODE, str(path))
    if row is None:
        raise NotFound(f"node {str(path)!r} does not exist")
    return row


async def describe_node(conn: Conn, path: NodePath) -> dict[str, Any]:
    """Return a node with its children and the metadata of its own secrets."""
    node = await get_node(conn, path)
    children = await conn.fetch(CHILDREN, node["id"])
    chain = await load_secrets(conn, [node])
    return {
        **node_row_to_dict(node),
        "changed_seq": node["changed_seq"],
        "children": [c["name"] for c in children],
        "secrets": [s.name for s in chain[0].secrets],
    }


async def delete_node(conn: Conn, path: NodePath, *, recursive: bool) -> list[str]:
    """Delete a node (refused while it has children or secrets, unless ``recursive``).

    Returns the SM names to schedule for deletion; the outbox rows are written here, in the
    caller's transaction, so that the deletion reaches SM even if kmsd stops right after.
    """
    node = await get_node(conn, path, for_update=True)
    counts = await conn.fetchrow(SUBTREE_COUNTS, node["id"])
    assert counts is not None
    if (counts["children"] or counts["secrets"]) and not recursive:
        raise Conflict(
            f"node {str(path)!r} still has {counts['children']} child node(s) and "
            f"{counts['secrets']} secret(s); delete them first or ask for a recursive delete",
            children=counts["children"],
            secrets=counts["secrets"],
        )
    below = below_pattern(str(path))
    await conn.execute(LOCK_SUBTREE, str(path), below)
    referenced = await conn.fetchval(SUBTREE_REFERENCED, str(path), below)
    if referenced:
        raise Conflict(
            f"{referenced} secret(s) under {str(path)!r} are referenced by other applications; "
            "unshare them (with remove_refs) first"
        )
    sm_names = [r["sm_name"] for r in await conn.fetch(SUBTREE_SECRETS, str(path), below)]
    for name in sm_names:
        await conn.execute(INSERT_OUTBOX, "delete", name, None, "{}")
    await conn.execute(DELETE_NODE, node["id"])
    return sm_names


def _metas(rows: Sequence[asyncpg.Record], key: str) -> dict[Any, dict[Any, SecretMeta]]:
    """Group secret rows (one per version) into SecretMeta, by ``key`` then by secret."""
    grouped: dict[Any, dict[Any, tuple[asyncpg.Record, list[SecretVersion]]]] = {}
    for r in rows:
        entry = grouped.setdefault(r[key], {}).setdefault(r["group_id"], (r, []))
        entry[1].append(
            SecretVersion(r["version_id"], r["stage"], r["version_created_at"], r["ciphertext"])
        )
    return {
        k: {
            g: SecretMeta(
                name=r["name"],
                kind=r["kind"],
                sm_arn=r["sm_arn"],
                versions=tuple(versions),
                expires_at=r["expires_at"],
                description=r["description"],
                cmk_arn=r["cmk_arn"],
            )
            for g, (r, versions) in by_secret.items()
        }
        for k, by_secret in grouped.items()
    }


async def load_secrets(conn: Conn, nodes: Sequence[asyncpg.Record]) -> list[NodeSecrets]:
    """Load the secrets and references of ``nodes``, keeping their order."""
    ids = [n["id"] for n in nodes]
    own = _metas(await conn.fetch(SECRETS_OF_NODES, ids), "node_id")
    ref_rows = await conn.fetch(REFS_OF_NODES, ids)
    shared = _metas(ref_rows, "node_id")
    targets = {(r["node_id"], r["group_id"]): r["target_ref"] for r in ref_rows}
    chain = []
    for n in nodes:
        refs = tuple(
            RefMeta(local_name, meta, targets[(n["id"], local_name)])
            for local_name, meta in shared.get(n["id"], {}).items()
        )
        chain.append(NodeSecrets(n["path"], tuple(own.get(n["id"], {}).values()), refs))
    return chain


async def load_chain(conn: Conn, path: NodePath) -> tuple[int, list[NodeSecrets]]:
    """Return ``(path_version, chain)`` for an application path or one below it."""
    if path.is_namespace:
        raise InvalidInput(
            f"{str(path)!r} is a namespace; effective sets start at an application "
            "(namespace/application[/child...])"
        )
    found = (await load_chains(conn, [path]))[str(path)]
    if found is None:
        raise NotFound(f"node {str(path)!r} does not exist")
    return found


async def load_chains(
    conn: Conn, paths: Sequence[NodePath]
) -> dict[str, tuple[int, list[NodeSecrets]] | None]:
    """Load many chains in two queries; a path that does not exist maps to None."""
    wanted = {str(p): [str(a) for a in p.ancestors_from_application()] for p in paths}
    everything = sorted({a for chain in wanted.values() for a in chain})
    rows = await conn.fetch(GET_NODES, everything)
    by_path = {r["path"]: r for r in rows}
    secrets = await load_secrets(conn, rows)
    secrets_by_path = {ns.path: ns for ns in secrets}
    out: dict[str, tuple[int, list[NodeSecrets]] | None] = {}
    for path, chain in wanted.items():
        if not chain or any(a not in by_path for a in chain):
            out[path] = None
            continue
        version = max(by_path[a]["changed_seq"] for a in chain)
        out[path] = (version, [secrets_by_path[a] for a in chain])
    return out


async def get_secret(conn: Conn, node_id: int, name: str) -> asyncpg.Record | None:
    return await conn.fetchrow(GET_SECRET, node_id, name)


async def secret_versions(conn: Conn, secret_id: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(SECRET_VERSIONS, secret_id)
    return [
        {
            "version_id": r["version_id"],
            "stage": r["stage"],
            "created_by": r["created_by"],
            "created_at": r["created_at"].isoformat(),
        }
        for r in rows
    ]


def iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts else None
