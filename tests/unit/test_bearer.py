"""The strict Authorization parser: one table of headers, each accepted or refused."""

from __future__ import annotations

import pytest

from kmsd.domain.bearer import CONSOLE_PREFIX, Kind, check_kind, kind_of, parse_bearer
from kmsd.errors import Unauthenticated

TOKEN = "Zm9vYmFy-_abcDEF0123456789xyzXYZ"
CONSOLE = CONSOLE_PREFIX + TOKEN


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (f"Bearer {TOKEN}", TOKEN),
        (f"bearer {TOKEN}", TOKEN),  # the scheme is case-insensitive (RFC 9110)
        (f"BEARER {CONSOLE}", CONSOLE),
        ("Bearer abc==", "abc=="),
    ],
)
def test_accepted(header: str, token: str) -> None:
    assert parse_bearer(header) == token


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer",
        "Bearer ",
        f"Bearer  {TOKEN}",  # two spaces: once read as a console cookie turned API token
        f"Bearer\t{TOKEN}",
        f"Bearer \t{TOKEN}",
        f"Bearer   {CONSOLE}",
        f" Bearer {TOKEN}",
        f"Bearer {TOKEN} ",
        f"Bearer {TOKEN}\x01",
        f"Bearer {TOKEN}\x00",
        f"Bearer {TOKEN} extra",
        f"Basic {TOKEN}",
        f"Token {TOKEN}",
        f"Bearer {TOKEN}é",  # non-ASCII (a non-UTF-8 header decodes to latin-1)
        "Bearer =abc",
        "Bearer " + "a" * 513,
    ],
)
def test_refused(header: str) -> None:
    with pytest.raises(Unauthenticated):
        parse_bearer(header)


def test_kinds_never_cross() -> None:
    assert kind_of(CONSOLE) is Kind.CONSOLE
    assert kind_of(TOKEN) is Kind.API
    check_kind(CONSOLE, console_route=True)
    check_kind(TOKEN, console_route=False)
    with pytest.raises(Unauthenticated, match="console only"):
        check_kind(CONSOLE, console_route=False)
    with pytest.raises(Unauthenticated, match="one-time link"):
        check_kind(TOKEN, console_route=True)
