"""The expiring page: secrets that expire soon, split by who renews them.

Hand-made secrets (put by a person, no generation spec) are what ``GET /v1/expiring`` lists:
nothing renews them, a person must replace them. Generated keys and data keys the scheduler
renews by itself ahead of their expiry (``kmsd.services.scheduler``), from the moment its DUE
query names (the lead time before expiry, never before half the key's life); they are listed
with that moment, so one past it and still not renewed stands out. Rows are those of nodes the
viewer may ``view``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web

from kmsd.domain.inputs import parse_int
from kmsd.http.console.openapi import page as doc_page
from kmsd.http.console.pages import page, viewer
from kmsd.http.openapi_ops import param
from kmsd.http.openapi_schemas import Schema
from kmsd.keys import CLOCK, POOL, SETTINGS
from kmsd.services.scheduler import EXPIRING_HAND_MADE

DEFAULT_DAYS = 30
# What the scheduler renews (DUE's rows, kmsd.services.scheduler), expiring before $1.
EXPIRING_RENEWED = """
SELECT n.path, s.name, s.kind, s.expires_at, s.updated_at
FROM secrets s JOIN nodes n ON n.id = s.node_id
WHERE (s.spec IS NOT NULL OR s.kind = 'datakey') AND s.expires_at < $1
ORDER BY s.expires_at
"""


async def expiring_page(request: web.Request) -> web.Response:
    days = parse_int(request.query.get("days", str(DEFAULT_DAYS)), "days", low=0, high=3650)
    who = await viewer(request)
    now = request.app[CLOCK].now()
    horizon = now + timedelta(days=days)
    pool = request.app[POOL]

    lead = timedelta(days=request.app[SETTINGS].rotation_lead_days)

    def shown(records: list[Any], *, renewed: bool) -> list[dict[str, Any]]:
        out = []
        for r in records:
            if not who.may("view", r["path"]):
                continue
            row = {
                "path": r["path"],
                "name": r["name"],
                "kind": r["kind"],
                "expires_at": r["expires_at"].isoformat(),
                "days_left": (r["expires_at"] - now).days,
                "expired": r["expires_at"] <= now,
            }
            if renewed:  # from when the scheduler renews it (as its DUE query)
                due = r["expires_at"] - min(lead, (r["expires_at"] - r["updated_at"]) / 2)
                row["renews_at"] = due.isoformat()
                row["overdue"] = due <= now
            out.append(row)
        return out

    return await page(
        request,
        "expiring.html",
        "expiring",
        who=who,
        days=days,
        manual=shown(await pool.fetch(EXPIRING_HAND_MADE, horizon), renewed=False),
        renewed=shown(await pool.fetch(EXPIRING_RENEWED, horizon), renewed=True),
    )


def routes(app: web.Application) -> None:
    """Add this module's pages to ``app``."""
    app.router.add_get("/ui/expiring", expiring_page)


def openapi_paths() -> dict[str, dict[str, Schema]]:
    """This module's pages in the OpenAPI document."""
    days = {"type": "integer", "minimum": 0, "maximum": 3650, "default": DEFAULT_DAYS}
    return {
        "/ui/expiring": {
            "get": doc_page(
                "console_expiring",
                "Secrets expiring soon: what the scheduler renews, what a person must replace",
                (param("days", "query", days, "how far ahead to look"),),
            )
        }
    }
