"""``GET /v1/iam-policy/app/{path}`` and ``GET /v1/iam-policy/server``."""

from __future__ import annotations

from aiohttp import web

from kmsd.aws.identity import own_account
from kmsd.db import store
from kmsd.domain.access import ROOT, parse_cidrs
from kmsd.domain.iam import KeyUse, app_policy, server_policy
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


async def app(request: web.Request) -> web.Response:
    path = NodePath.parse(request.match_info["path"])
    if path.is_namespace:
        raise InvalidInput("name an application (namespace/application[/child...])")
    await authorize(request, "view", str(path))
    cidrs = [str(c) for c in parse_cidrs(request.query.getall("source_cidr", []))]
    pool = request.app[POOL]
    if await pool.fetchval("SELECT 1 FROM nodes WHERE path = $1", str(path)) is None:
        raise NotFound(f"node {str(path)!r} does not exist")
    chain = [str(p) for p in path.ancestors_from_application()]
    rows = await pool.fetch(APP_SECRETS, chain, store.below_pattern(str(path)))
    keys = [
        KeyUse(r["cmk_arn"], tuple(sorted(datakey_context(r["path"], r["name"]).items())))
        for r in rows
        if r["kind"] == "datakey"
    ]
    arns = [r["sm_arn"] for r in rows if r["kind"] != "datakey"]
    shared = await pool.fetch(APP_REFERENCED, chain, store.below_pattern(str(path)))
    keys += [
        KeyUse(r["cmk_arn"], tuple(sorted(datakey_context(r["path"], r["name"]).items())))
        for r in shared
        if r["kind"] == "datakey"
    ]
    shared_arns = [r["sm_arn"] for r in shared if r["kind"] != "datakey"]
    return json_response(app_policy(arns, source_cidrs=cidrs, keys=keys, shared_arns=shared_arns))


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
