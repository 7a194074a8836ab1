"""``GET /v1/iam-policy/app/{path}``, ``GET /v1/iam-policy/drift/{path}`` and
``GET /v1/iam-policy/server``.

Fetching a host policy records it (``iam_policy_fetches``: one row per node, the last fetch
wins) as the one presumed applied; the drift call compares it with the policy the node needs
now. The drift route is not ``/app/{path}/drift``: ``drift`` is a legal node name, so
``/app/prod/pay/drift`` would be the policy of ``prod/pay/drift`` as much as the drift of
``prod/pay``.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from aiohttp import web

from kmsd.aws.identity import own_account
from kmsd.db import store
from kmsd.domain.access import ROOT, parse_cidrs
from kmsd.domain.iam import (
    DEFAULT_SHAPE,
    SHAPES,
    KeyUse,
    NothingToGrant,
    Shared,
    app_policy,
    prefix_policy,
    server_policy,
    uncovered,
)
from kmsd.domain.names import NodePath
from kmsd.domain.tree import datakey_context
from kmsd.errors import InvalidInput, NotFound
from kmsd.http.access import authorize
from kmsd.http.common import json_response
from kmsd.keys import POOL, SETTINGS, WEBHOOK_KEYS

# Secrets an application's hosts may meet: on its chain (application down to the path) and
# anywhere in the path's subtree (its clusters' own secrets).
# Shared secrets referenced on the chain or in the subtree (path: the owner's node).
APP_REFERENCED = """
SELECT t.kind, t.sm_arn, t.cmk_arn, t.name, tn.path FROM refs r
JOIN nodes n ON n.id = r.node_id JOIN secrets t ON t.id = r.secret_id
JOIN nodes tn ON tn.id = t.node_id
WHERE n.path = ANY($1::text[]) OR n.path LIKE $2
"""
APP_SECRETS = """
SELECT s.kind, s.sm_arn, s.cmk_arn, s.name, n.path FROM secrets s JOIN nodes n ON n.id = s.node_id
WHERE n.path = ANY($1::text[]) OR n.path LIKE $2
"""
RECORD_FETCH = """
INSERT INTO iam_policy_fetches (node_id, shape, source_cidrs, policy, fetched_by)
VALUES ($1, $2, $3::text[], $4::jsonb, $5)
ON CONFLICT (node_id) DO UPDATE
SET shape = EXCLUDED.shape, source_cidrs = EXCLUDED.source_cidrs, policy = EXCLUDED.policy,
    fetched_by = EXCLUDED.fetched_by, fetched_at = now()
"""
LAST_FETCH = """
SELECT shape, source_cidrs, policy::text AS policy, fetched_at FROM iam_policy_fetches
WHERE node_id = $1
"""
# Secrets and references the path's hosts meet that were made after the fetch, as PATH/NAME.
ADDED_SINCE = """
SELECT n.path || '/' || s.name AS name, s.created_at AS at FROM secrets s
JOIN nodes n ON n.id = s.node_id
WHERE (n.path = ANY($1::text[]) OR n.path LIKE $2) AND s.created_at > $3
UNION ALL
SELECT n.path || '/' || r.local_name, r.created_at FROM refs r JOIN nodes n ON n.id = r.node_id
WHERE (n.path = ANY($1::text[]) OR n.path LIKE $2) AND r.created_at > $3
ORDER BY at, name
"""


async def app(request: web.Request) -> web.Response:
    path = _app_path(request)
    who = await authorize(request, "view", str(path))
    shape = request.query.get("shape", DEFAULT_SHAPE)
    if shape not in SHAPES:
        raise InvalidInput(f"shape must be one of {', '.join(SHAPES)}", allowed=list(SHAPES))
    cidrs = [str(c) for c in parse_cidrs(request.query.getall("source_cidr", []))]
    pool = request.app[POOL]
    node_id = await _node_id(pool, path)
    policy = await needed_policy(request, path, shape, cidrs)
    await pool.execute(RECORD_FETCH, node_id, shape, cidrs, orjson.dumps(policy).decode(), who.arn)
    return json_response(policy)


async def drift(request: web.Request) -> web.Response:
    path = _app_path(request)
    await authorize(request, "view", str(path))
    return json_response(await drift_of(request, path, await _node_id(request.app[POOL], path)))


async def drift_of(request: web.Request, path: NodePath, node_id: int) -> dict[str, Any]:
    """What ``GET /v1/iam-policy/drift/{path}`` answers for the node ``node_id`` at ``path``."""
    pool = request.app[POOL]
    last = await pool.fetchrow(LAST_FETCH, node_id)
    if last is None:
        # Never fetched through kmsd: whatever the hosts have, kmsd cannot vouch for it.
        return {
            "path": str(path),
            "fetched_at": None,
            "shape": None,
            "source_cidrs": [],
            "added_since": [],
            "uncovered": [],
            "needs_reapply": True,
        }
    try:
        needed: dict[str, Any] | None = await needed_policy(
            request, path, last["shape"], list(last["source_cidrs"])
        )
    except NothingToGrant:
        needed = None  # everything was removed: the old policy lacks nothing
    missing = uncovered(orjson.loads(last["policy"]), needed)
    chain = [str(p) for p in path.ancestors_from_application()]
    added = await pool.fetch(ADDED_SINCE, chain, store.below_pattern(str(path)), last["fetched_at"])
    return {
        "path": str(path),
        "fetched_at": last["fetched_at"].isoformat(),
        "shape": last["shape"],
        "source_cidrs": list(last["source_cidrs"]),
        "added_since": [r["name"] for r in added],
        "uncovered": missing,
        "needs_reapply": bool(missing),
    }


def _app_path(request: web.Request) -> NodePath:
    path = NodePath.parse(request.match_info["path"])
    if path.is_namespace:
        raise InvalidInput("name an application (namespace/application[/child...])")
    return path


async def _node_id(pool: asyncpg.Pool, path: NodePath) -> int:
    node_id: int | None = await pool.fetchval("SELECT id FROM nodes WHERE path = $1", str(path))
    if node_id is None:
        raise NotFound(f"node {str(path)!r} does not exist")
    return node_id


async def needed_policy(
    request: web.Request, path: NodePath, shape: str, cidrs: list[str]
) -> dict[str, Any]:
    """The policy ``path``'s hosts need now, in ``shape``."""
    pool = request.app[POOL]
    chain = [str(p) for p in path.ancestors_from_application()]
    below = store.below_pattern(str(path))
    rows = await pool.fetch(APP_SECRETS, chain, below)
    shared = await pool.fetch(APP_REFERENCED, chain, below)
    keys = [
        KeyUse(r["cmk_arn"], tuple(sorted(datakey_context(r["path"], r["name"]).items())))
        for r in [*rows, *shared]
        if r["kind"] == "datakey"
    ]
    if shape == "exact":
        return app_policy(
            [r["sm_arn"] for r in rows if r["kind"] != "datakey"],
            source_cidrs=cidrs,
            keys=keys,
            shared_arns=[r["sm_arn"] for r in shared if r["kind"] != "datakey"],
        )
    settings = request.app[SETTINGS]
    partition, account = await own_account(settings)
    return prefix_policy(
        path,
        partition=partition,
        region=settings.aws_region,
        account=account,
        sm_prefix=settings.sm_prefix,
        source_cidrs=cidrs,
        keys=keys,
        shared=[Shared(r["sm_arn"], r["path"]) for r in shared if r["kind"] != "datakey"],
    )


async def server(request: web.Request) -> web.Response:
    await authorize(request, "view", ROOT)
    settings = request.app[SETTINGS]
    partition, account = await own_account(settings)
    return json_response(
        server_policy(
            partition=partition,
            region=settings.aws_region,
            account=account,
            sm_prefix=settings.sm_prefix,
            webhook_mac_key_arn=await request.app[WEBHOOK_KEYS].key_arn(),
        )
    )
