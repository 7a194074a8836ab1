"""The ``Authorization`` header, strictly (pure): one parser, and token kinds that never cross.

RFC 6750 allows exactly ``Bearer`` SP b64token. Anything looser lets two readings of one header
disagree: a check made on the raw string and a lookup made on a stripped one once let a console
session (``kmsdc.`` prefix) through as an API token with two spaces. So: one space, the token's
own character set, nothing before or after, and the kind decided from the token as looked up.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from enum import StrEnum

from kmsd.errors import Unauthenticated

# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_TOKEN = 512  # kmsd's tokens are under 60 characters; nothing longer is one of ours
CONSOLE_PREFIX = "kmsdc."  # console sessions: the console's pages, and its own fetches
CSRF_HEADER = "X-Kmsd-Csrf"  # the console's fetches carry the session's CSRF token in it


class Kind(StrEnum):
    API = "api"
    CONSOLE = "console"


def parse_bearer(header: str) -> str:
    """The token of an ``Authorization: Bearer TOKEN`` header; Unauthenticated otherwise."""
    scheme, space, token = header.partition(" ")
    if scheme.lower() != "bearer" or space != " ":
        raise Unauthenticated("send Authorization: Bearer TOKEN from POST /v1/auth/aws/login")
    if len(token) > MAX_TOKEN or not _B64TOKEN.fullmatch(token):
        raise Unauthenticated(
            "malformed bearer token: exactly one space after 'Bearer', then the token alone"
        )
    return token


def kind_of(token: str) -> Kind:
    return Kind.CONSOLE if token.startswith(CONSOLE_PREFIX) else Kind.API


def check_kind(token: str, *, console_route: bool) -> None:
    """A console session never opens the API from an ``Authorization`` header, an API token
    never opens the console: they never cross. (The console's own fetches reach the API with
    the session's cookie and its CSRF token, a road a header-held token cannot take.)"""
    if kind_of(token) is Kind.CONSOLE and not console_route:
        raise Unauthenticated("a console session opens the console only; use kmsctl for the API")
    if kind_of(token) is Kind.API and console_route:
        raise Unauthenticated("the console opens from a one-time link: kmsctl console")


def csrf_token(session_token: str) -> str:
    """The CSRF token of a console session: derived from the session token, so nothing is
    stored and another session's token never matches; one-way, so a page that shows it gives
    the cookie away to no one."""
    return hashlib.sha256(b"kmsd console csrf\0" + session_token.encode()).hexdigest()[:40]


def csrf_matches(session_token: str, given: str) -> bool:
    return hmac.compare_digest(csrf_token(session_token).encode(), given.encode()[:64])
