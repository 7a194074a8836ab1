"""The operator console: server-rendered pages over kmsd's own API.

Pages read through the same services and access decisions as the API; every change a page
offers is a ``fetch`` to the API itself (``assets/console.js``), with the session cookie and
its CSRF token, so it passes the same handler, access check and audit row as ``kmsctl``.
Sign-in is a one-time link from ``kmsctl console`` (``session.py``).
"""

from __future__ import annotations

from aiohttp import web

from kmsd.http.console import access, audit, expiring, fleet, rotations, secret, session, tree
from kmsd.http.console.pages import SECURITY_HEADERS, asset, setup_templates

# Each section adds its own pages (``routes``) and documents them (``openapi_paths``).
SECTIONS = (tree, secret, access, audit, fleet, expiring)


async def _strict_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer under /ui/ - pages, refusals, redirects, streams - carries the console's
    headers (a page already set them; a refusal from a middleware has not)."""
    if request.path.startswith("/ui/"):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)


async def home(request: web.Request) -> web.Response:
    return web.Response(status=303, headers={"Location": session.HOME})


def setup_console_routes(app: web.Application) -> None:
    setup_templates(app)
    app.on_response_prepare.append(_strict_headers)
    app.router.add_post("/v1/console/links", session.create_link)
    app.router.add_get("/ui/login", session.login)
    app.router.add_post("/ui/logout", session.logout)
    app.router.add_get("/ui/signed-out", session.signed_out)
    app.router.add_get("/ui/assets/{name}", asset)
    app.router.add_get("/ui/", home)
    app.router.add_get("/ui/rotations", rotations.rotations_page)
    app.router.add_get("/ui/rotations/{id}", rotations.rotation_page)
    app.router.add_get("/ui/rotations/{id}/events", rotations.rotation_events)
    for pages in SECTIONS:
        pages.routes(app)
