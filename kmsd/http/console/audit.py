"""The audit page: search the trail, page through it, verify its hash chain.

The search is a plain GET form whose fields are ``GET /v1/audit``'s query parameters, read by
the same rules and under the same check (``view`` on the path searched, ``admin`` for the
whole trail; who may not search it all gets the form, empty, to name a path). Paging goes by
sequence number (``before=SEQ``), so rows written meanwhile never shift a page. Verifying is a
read that can take a while, not a change: ``?verify=1`` runs what ``POST /v1/audit/verify``
runs, under its check (``admin``), and shows the result, the first broken row included, on
the page itself.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kmsd.db import audit as audit_db
from kmsd.domain.access import ROOT
from kmsd.domain.inputs import parse_int, parse_time
from kmsd.domain.names import NodePath
from kmsd.http.access import authorize
from kmsd.http.common import AUDIT_TARGET
from kmsd.http.console.openapi import page as doc_page
from kmsd.http.console.pages import page, viewer
from kmsd.http.openapi_ops import param
from kmsd.http.openapi_schemas import Schema
from kmsd.http.reads import audit_doc, search_audit
from kmsd.keys import POOL

PAGE_SIZE = 50
FIELDS = ("principal", "path", "action", "outcome", "since", "until")
OUTCOMES = ("allowed", "denied", "rejected", "error", "attempt")


async def audit_page(request: web.Request) -> web.Response:
    q = request.query
    given = {k: q[k] for k in FIELDS if q.get(k)}
    path = str(NodePath.parse(given["path"])) if "path" in given else None
    who = await viewer(request)
    if path is None and not who.may("admin", ROOT):
        # The nav link for who may not search the whole trail: the form, to name a path.
        return await page(
            request,
            "audit.html",
            "audit",
            who=who,
            given=given,
            outcomes=OUTCOMES,
            rows=[],
            next_query=None,
            verified=None,
            need_path=True,
        )
    request[AUDIT_TARGET] = path or ROOT  # as GET /v1/audit's row names what was searched
    await authorize(request, "view" if path else "admin", path or ROOT)
    before = parse_int(q["before"], "before", low=1, high=2**63 - 1) if q.get("before") else None
    since = parse_time(given["since"], "since") if "since" in given else None
    until = parse_time(given["until"], "until") if "until" in given else None
    found = await search_audit(
        request.app[POOL],
        principal=given.get("principal"),
        path=path,
        action=given.get("action"),
        since=since,
        until=until,
        outcome=given.get("outcome"),
        limit=PAGE_SIZE + 1,
        before=before,
    )
    rows = [audit_doc(r) for r in found[:PAGE_SIZE]]
    next_query = None
    if len(found) > PAGE_SIZE:
        next_query = {**given, "before": str(rows[-1]["seq"])}
    verified: dict[str, Any] | None = None
    if q.get("verify"):
        await authorize(request, "admin", ROOT)
        checked, broken = await audit_db.verify(request.app[POOL])
        verified = {
            "ok": broken is None,
            "checked": checked,
            "first_broken_seq": broken,
        }
        if broken is not None:
            row = await request.app[POOL].fetchrow("SELECT * FROM audit_log WHERE seq = $1", broken)
            verified["row"] = audit_doc(audit_db.row_of(row)) if row else None
    return await page(
        request,
        "audit.html",
        "audit",
        who=who,
        given=given,
        outcomes=OUTCOMES,
        rows=rows,
        need_path=False,
        next_query=next_query,
        verified=verified,
    )


def routes(app: web.Application) -> None:
    """Add this module's pages to ``app``."""
    app.router.add_get("/ui/audit", audit_page)


def openapi_paths() -> dict[str, dict[str, Schema]]:
    """This module's pages in the OpenAPI document."""
    text = {"type": "string"}
    return {
        "/ui/audit": {
            "get": doc_page(
                "console_audit",
                "Search the audit trail, page through it, verify its hash chain",
                (
                    param("principal", "query", text, "who called (an ARN)"),
                    param("path", "query", text, "the path, below it, or something of it"),
                    param("action", "query", text, "e.g. binding.grant"),
                    param("outcome", "query", text, "allowed, denied, rejected, error or attempt"),
                    param("since", "query", text, "from this time (ISO 8601)"),
                    param("until", "query", text, "before this time (ISO 8601)"),
                    param(
                        "before",
                        "query",
                        {"type": "integer", "minimum": 1},
                        "rows older than this sequence number (the next page)",
                    ),
                    param("verify", "query", text, "any value: verify the hash chain (admin)"),
                ),
                (403,),
            )
        }
    }
