"""The console's expiring pages (to come)."""

from __future__ import annotations

from aiohttp import web

from kmsd.http.openapi_schemas import Schema


def routes(app: web.Application) -> None:
    """Add this module's pages to ``app``."""


def openapi_paths() -> dict[str, dict[str, Schema]]:
    """This module's pages in the OpenAPI document."""
    return {}
