"""The console's routes in the OpenAPI document: sign-in, its pages and assets.

Pages answer HTML and take the console session's cookie; they are listed so that the document
and the router agree both ways (tests/unit/test_openapi.py) and so that schemathesis reaches
them too.
"""

from __future__ import annotations

from kmsd.http.openapi_ops import answer, operation, param
from kmsd.http.openapi_schemas import Schema, ref

ROTATION_ID = param(
    "id", "path", {"type": "string", "pattern": r"^\d{1,18}$"}, "the rotation's id"
) | {"example": "1"}
# Console pages take the console session's cookie from /ui/login, never an API token.
SECURITY: Schema = {"security": [{"consoleCookie": []}]}
HTML = {"text/html": {"schema": {"type": "string"}}}
SEE_OTHER = {
    "description": "on to a console page",
    "headers": {"Location": {"schema": {"type": "string"}}},
}


def page(
    op_id: str,
    summary: str,
    params: tuple[Schema, ...] = (),
    errors: tuple[int, ...] = (),
    needs: str = "view",
) -> Schema:
    return (
        operation(
            op_id,
            "console",
            summary,
            needs=needs,
            params=params,
            errors=errors,
            ok={"200": {"description": "a server-rendered page", "content": HTML}},
        )
        | SECURITY
    )


def console_paths() -> dict[str, dict[str, Schema]]:
    from kmsd.http.console import SECTIONS  # the sections import this module's helpers

    sections: dict[str, dict[str, Schema]] = {}
    for pages in SECTIONS:
        sections |= pages.openapi_paths()
    return sections | _paths()


def _paths() -> dict[str, dict[str, Schema]]:
    # fmt: off
    return {
        "/v1/console/links": {"post": operation(
            "console_link", "console", "A one-time console sign-in link (two minutes)",
            ok={"201": answer(ref("ConsoleLink"), "open path once, from the same address")},
        )},
        "/ui/login": {"get": operation(
            "console_login", "console", "Trade a one-time code for a console session cookie",
            params=(
                param("code", "query", {"type": "string"}, "from POST /v1/console/links"),
                param("next", "query", {"type": "string"},
                      "a console page to go to (/ui/...); anything else leads to /ui/tree"),
            ),
            ok={"303": {
                "description": "signed in: the session cookie is set, on to the page",
                "headers": {"Location": {"schema": {"type": "string"}},
                            "Set-Cookie": {"schema": {"type": "string"}}},
            }},
            errors=(401,), public=True,
        )},
        "/ui/logout": {"post": operation(
            "console_logout", "console",
            "End the console session (send the session's CSRF token in X-Kmsd-Csrf)",
            ok={"303": SEE_OTHER}, errors=(403,),
        ) | SECURITY},
        "/ui/signed-out": {"get": operation(
            "console_signed_out", "console", "The page after signing out",
            ok={"200": {"description": "a page", "content": HTML}}, public=True,
        )},
        "/ui/assets/{name}": {"get": operation(
            "console_asset", "console", "The console's CSS and JavaScript",
            params=(param("name", "path", {"type": "string"}, "a file name"),),
            ok={"200": {"description": "the file", "content": {
                "text/css": {"schema": {"type": "string"}},
                "text/javascript": {"schema": {"type": "string"}},
            }}},
            errors=(404,), public=True,
        )},
        "/ui/": {"get": operation(
            "console_home", "console", "The console's home: on to the tree",
            ok={"303": SEE_OTHER},
        ) | SECURITY},
        "/ui/rotations": {"get": page("console_rotations", "The rotations page")},
        "/ui/rotations/{id}": {"get": page(
            "console_rotation", "A rotation's live dashboard and its controls", (ROTATION_ID,),
            (404,),
        )},
        "/ui/rotations/{id}/events": {"get": operation(
            "console_rotation_events", "console",
            "Server-sent events: the dashboard's HTML each time the rotation changes",
            needs="view", params=(ROTATION_ID,),
            ok={"200": {"description": "an event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
            errors=(404,),
        ) | SECURITY},
    }
    # fmt: on
