"""How every console page is rendered: Jinja2 templates, the signed-in person, strict headers.

Templates live in ``templates/`` (autoescaped, ``StrictUndefined``: a missing field is an error
in a test, never a blank on a page). Each page gets ``who`` (the principal and their bindings),
``csrf`` (for the console's ``fetch`` calls) and ``may(permission, path)`` so that a page shows
only what its viewer may do; the server decides again on every request whatever a page shows.

Headers: a Content-Security-Policy with no inline script or style (the JS and CSS are files
under ``/ui/assets/``), no framing, no referrer (a one-time link's code never leaves in one),
no caching of pages that name secrets.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from kmsd.domain.access import Binding, arn_matches, decide, is_admin
from kmsd.domain.bearer import csrf_token
from kmsd.errors import NotFound
from kmsd.http.access import caller_ip
from kmsd.http.common import principal
from kmsd.keys import BINDINGS, SETTINGS

COOKIE = "kmsd_console"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
NAV = (
    ("tree", "/ui/tree", "Tree"),
    ("access", "/ui/access", "Access"),
    ("audit", "/ui/audit", "Audit"),
    ("fleet", "/ui/fleet", "Fleet"),
    ("rotations", "/ui/rotations", "Rotations"),
    ("expiring", "/ui/expiring", "Expiring"),
)
ASSETS = resources.files("kmsd.http.console") / "assets"
ASSET_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


def setup_templates(app: web.Application) -> None:
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("kmsd.http.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


class Viewer:
    """The signed-in person as the pages see them."""

    def __init__(self, request: web.Request, bindings: list[Binding]) -> None:
        settings = request.app[SETTINGS]
        self.arn = principal(request).arn
        self.admin = is_admin(self.arn, settings.admins)
        self.bindings = [b for b in bindings if arn_matches(b.principal, self.arn)]
        self._all = bindings
        self._admins = settings.admins
        self._ip = caller_ip(request)

    def may(self, needed: str, path: str) -> bool:
        return decide(
            self.arn, path, needed, ip=self._ip, bindings=self._all, admins=self._admins
        ).allowed


async def viewer(request: web.Request) -> Viewer:
    return Viewer(request, await request.app[BINDINGS].all())


async def page(request: web.Request, template: str, section: str, **context: Any) -> web.Response:
    """Render ``template`` with the common context and the console's headers."""
    who = context.pop("who", None) or await viewer(request)
    may: Callable[[str, str], bool] = who.may
    response = aiohttp_jinja2.render_template(
        template,
        request,
        {
            "who": who,
            "may": may,
            "csrf": csrf_token(request.cookies.get(COOKIE, "")),
            "nav": NAV,
            "section": section,
            **context,
        },
    )
    response.headers.update(SECURITY_HEADERS)
    return response


async def asset(request: web.Request) -> web.Response:
    """A file of ``assets/`` (CSS, JS): public, the same for everyone, cacheable."""
    name = request.match_info["name"]
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or name.startswith(".") or suffix not in ASSET_TYPES:
        raise NotFound(f"no console asset {name[:60]!r}")
    file = ASSETS / name
    if not file.is_file():
        raise NotFound(f"no console asset {name[:60]!r}")
    return web.Response(
        body=file.read_bytes(),
        content_type=ASSET_TYPES[suffix],
        headers={
            "Cache-Control": "public, max-age=300",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": CSP,
        },
    )
