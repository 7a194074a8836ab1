"""Class 1, tokens: a console session is never an API token, however the header is spelled.

One reading of the ``Authorization`` header decides both the token's kind and the session
looked up (kmsd.domain.bearer). A console session (``kmsdc.``) opens console pages only; a
header that is not exactly ``Bearer`` SP token is a 401; bytes that are not a token (control
characters, non-ASCII, non-UTF-8) are a 401 too, or a 400 where they make the message itself
invalid HTTP (refused before any handler reads it).
"""

from __future__ import annotations

import pytest

from tests.security.conftest import Target
from tests.security.wire import Case, Header, Req

KLASS = "1 tokens"
API = "/v1/auth/whoami"  # any API route that needs a token
PAGE = "/ui/rotations"  # a console page


def auth(*values: bytes, path: str = API) -> Req:
    headers: list[Header] = [("Authorization", v) for v in values]
    return Req("GET", path, headers=headers)


def cookie(token: str, path: str) -> Req:
    return Req("GET", path, headers=[("Cookie", f"kmsd_console={{{token}}}")])


CASES = [
    # A console session, spelled so that a loose parser strips it into an API token.
    Case("console-2-spaces", auth(b"Bearer  {console}"), 401),
    Case("console-3-spaces", auth(b"Bearer   {console}"), 401),
    Case("console-tab", auth(b"Bearer\t{console}"), 401),
    Case("console-space-tab", auth(b"Bearer \t{console}"), 401),
    Case("console-lowercase-bearer", auth(b"bearer {console}"), 401),
    Case("console-lowercase-2-spaces", auth(b"bearer  {console}"), 401),
    Case("console-uppercase-tab", auth(b"BEARER\t{console}"), 401),
    Case("console-plain", auth(b"Bearer {console}"), 401),
    Case("console-as-cookie-on-api", cookie("console", API), 401),
    Case(
        "console-makes-link",
        Req("POST", "/v1/console/links", headers=[("Authorization", b"Bearer {console}")]),
        401,
    ),
    Case(
        "console-writes",
        Req(
            "PUT",
            "/v1/nodes/sec/pay/console-made",
            headers=[("Authorization", b"Bearer  {console}")],
        ),
        401,
    ),
    # An API token with something around it: only the exact token is a token.
    Case("api-2-spaces", auth(b"Bearer  {api}"), 401),
    Case("api-tab", auth(b"Bearer\t{api}"), 401),
    Case("api-trailing-junk", auth(b"Bearer {api} junk"), 401),
    Case("api-glued-junk", auth(b"Bearer {api}junk"), 401),
    Case("api-basic-scheme", auth(b"Basic {api}"), 401),
    Case("api-no-scheme", auth(b"{api}"), 401),
    Case("api-non-ascii", auth("Bearer {api}\u00e9".encode()), 401),
    Case("api-non-utf8", auth(b"Bearer {api}\xff"), 401),
    Case("non-utf8-only", auth(b"Bearer \xff\xfe\xfd"), 401),
    Case("api-too-long", auth(b"Bearer " + b"A" * 600), 401),
    # Bytes HTTP does not allow in a field value: the message itself is refused.
    Case("api-ctl-x01", auth(b"Bearer {api}\x01"), 400),
    Case("api-nul", auth(b"Bearer {api}\x00"), 400),
    Case("console-ctl-x01", auth(b"Bearer {console}\x01"), 400),
    # Two Authorization lines: which one is the caller? Neither.
    Case("two-headers-console-then-api", auth(b"Bearer {console}", b"Bearer {api}"), 401),
    Case("two-headers-api-then-console", auth(b"Bearer {api}", b"Bearer {console}"), 401),
    Case("two-headers-api-twice", auth(b"Bearer {api}", b"Bearer {api}"), 401),
    # Console pages: a console session with a loose header, and API tokens.
    Case("page-console-2-spaces", auth(b"Bearer  {console}", path=PAGE), 401),
    Case("page-cookie-non-utf8", Req("GET", PAGE, headers=[("Cookie", b"kmsd_console=\xff")]), 401),
    Case("page-api-bearer", auth(b"Bearer {api}", path=PAGE), 401),
    Case("page-api-cookie", cookie("api", PAGE), 401),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused(target: Target, case: Case) -> None:
    target.check(KLASS, case)
