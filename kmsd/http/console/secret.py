"""The console's secret page: one secret's metadata, versions and the changes it offers.

Everything shown is what ``GET /v1/secrets/PATH/NAME`` answers (kmsd never holds a value).
The value entry is write-only: its fields are cleared by ``console.js`` after every attempt,
and nothing on the page ever comes from Secrets Manager. A secret the viewer may not view is a
404, the same answer as a missing one.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from kmsd.domain.names import NodePath, check_segment
from kmsd.errors import InvalidInput, NotFound
from kmsd.http.console.openapi import page as doc_page
from kmsd.http.console.pages import page, viewer
from kmsd.http.openapi_ops import tail
from kmsd.http.openapi_schemas import SECRET_REF, Schema
from kmsd.http.reads import describe_secret
from kmsd.keys import POOL, ROTATIONS, SETTINGS

SECRET_PARAM = tail(
    "path", SECRET_REF, "PATH/NAME: a node path, then the secret's name", "prod/payments/db"
)


def _split(raw: str) -> tuple[NodePath, str]:
    path, _, name = raw.rpartition("/")
    if not path:
        raise InvalidInput("expected PATH/NAME: a node path, then the secret name")
    return NodePath.parse(path), check_segment(name, "secret name")


def regenerate_body(spec: dict[str, Any] | None) -> str:
    """The generate request that makes another key of the same spec ("" for none)."""
    if not spec:
        return ""
    body = {"use": spec["use"], "algorithm": spec["algorithm"]}
    if spec.get("size") is not None:
        body["length"] = spec["size"]
    body["lifetime_days"] = spec["lifetime_days"]
    return orjson.dumps(body).decode()


async def secret_page(request: web.Request) -> web.Response:
    path, name = _split(request.match_info["path"])
    who = await viewer(request)
    if not who.may("view", str(path)):
        raise NotFound(f"secret {name!r} does not exist at {str(path)!r}")
    doc = await describe_secret(request.app[POOL], path, name)
    rotations = [
        r
        for r in await request.app[ROTATIONS].list(str(path), active_only=False, limit=50)
        if r["name"] == name
    ]
    return await page(
        request,
        "secret.html",
        "tree",
        who=who,
        doc=doc,
        rotations=rotations,
        can_edit=who.may("edit", str(path)),
        recovery_days=request.app[SETTINGS].sm_recovery_window_days,
        regenerate=regenerate_body(doc["generated"]),
        tags_json=orjson.dumps(doc["tags"]).decode(),
    )


def routes(app: web.Application) -> None:
    """Add this module's pages to ``app``."""
    app.router.add_get("/ui/secret/{path:.+}", secret_page)


def openapi_paths() -> dict[str, dict[str, Schema]]:
    """This module's pages in the OpenAPI document."""
    return {
        "/ui/secret/{path}": {
            "get": doc_page(
                "console_secret",
                "A secret's metadata, versions and stages, with its write-only value entry",
                (SECRET_PARAM,),
                (404,),
            )
        },
    }
