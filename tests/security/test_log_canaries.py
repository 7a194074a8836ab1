"""Class 3, values and tokens in logs: what a request carries as a value never lands anywhere.

Each case carries its own canary where a secret value or a token goes (a secret's value, a
chunked body's trailer, a bearer token) and is refused. Every case checks its answer and the
log lines written meanwhile (Target.check); test_leaks.py checks the whole log, every audit
row, /metrics and the console pages once the suite has run. A malformed message is refused
before any handler reads it; the parser saw its raw bytes, and neither the answer nor the log
line about it may quote them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from tests.security.conftest import APP, Target
from tests.security.wire import Case, Header, Req

KLASS = "3 values in logs"
SECRET = f"/v1/secrets/{APP}/db"
VALUE = json.dumps({"kind": "json", "value": {"password": "{canary}"}}).encode()


def raw(data: bytes) -> Req:
    return Req(raw=data)


def chunked_put(ending: bytes, who: str = "api", **headers: str) -> Req:
    """A chunked PUT of the canary as a secret's value, then ``ending`` (last chunk, trailer)."""
    return Req(
        "PUT",
        SECRET,
        headers=[("Authorization", f"Bearer {{{who}}}"), *headers.items()],
        chunks=[VALUE],
        ending=ending,
    )


def put(body: bytes | dict[str, object], who: str = "api", extra: Sequence[Header] = ()) -> Req:
    headers: list[Header] = [
        ("Authorization", f"Bearer {{{who}}}"),
        ("Content-Type", "application/json"),
    ]
    return Req("PUT", SECRET, headers=[*headers, *extra], body=body)


def nested(leaf: object, depth: int) -> object:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


WHOAMI = b"GET /v1/auth/whoami HTTP/1.1\r\nHost: k\r\n"
CASES = [
    # Malformed on the wire: refused by the HTTP parser, before any handler.
    Case("trailer-bad-line", chunked_put(b"0\r\nBad Trailer {canary}\r\n\r\n"), 400),
    Case("trailer-ctl-char", chunked_put(b"0\r\nX-T: {canary}\x01\r\n\r\n"), 400),
    Case("trailer-nul", chunked_put(b"0\r\nX-T: {canary}\x00\r\n\r\n"), 400),
    Case("value-then-bad-chunk-size", chunked_put(b"zz{canary}\r\n\r\n"), 400),
    Case(
        "value-smuggled-length-and-chunked",
        chunked_put(b"0\r\n\r\n", **{"Content-Length": "5"}),
        400,
    ),
    Case("token-then-ctl", raw(WHOAMI + b"Authorization: Bearer {api}\x01\r\n\r\n"), 400),
    Case("console-then-ctl", raw(WHOAMI + b"Authorization: Bearer {console}\x01\r\n\r\n"), 400),
    Case("token-then-nul", raw(WHOAMI + b"Authorization: Bearer {api}\x00\r\n\r\n"), 400),
    Case("value-header-then-nul", raw(WHOAMI + b"X-Secret: {canary}\x00\r\n\r\n"), 400),
    Case("nul-in-target", raw(b"GET /{canary}\x00 HTTP/1.1\r\nHost: k\r\n\r\n"), 400),
    Case("bad-method", raw(b"G\x01T /{canary} HTTP/1.1\r\nHost: k\r\n\r\n"), 400),
    Case("bad-version", raw(b"GET /{canary} HTTP/9.x\r\nHost: k\r\n\r\n"), 400),
    Case(
        "line-too-long",
        raw(b"GET /" + b"{canary}" * 1200 + b" HTTP/1.1\r\nHost: k\r\n\r\n"),
        400,
    ),
    Case("bad-header-name", raw(b"GET / HTTP/1.1\r\nX {canary}: 1\r\n\r\n"), 400),
    # Well-formed HTTP that kmsd refuses after reading the value: the refusal never quotes it.
    Case(
        "unknown-field-beside-value", put({"kind": "json", "value": {"p": "{canary}"}, "x": 1}), 400
    ),
    Case("value-not-an-object", put({"kind": "json", "value": "{canary}"}), 400),
    Case("binary-not-base64", put({"kind": "binary", "value_b64": "{canary}!"}), 400),
    Case("truncated-json", put(b'{"kind": "json", "value": {"password": "{canary}'), 400),
    Case("value-too-large", put({"kind": "json", "value": {"p": "{canary}" + "x" * 70000}}), 413),
    Case("value-too-deep", put({"kind": "json", "value": {"p": nested("{canary}", 40)}}), 400),
    Case("value-by-a-reader", put({"kind": "json", "value": {"p": "{canary}"}}, "victim"), 403),
    Case("value-unknown-token", put({"kind": "json", "value": {"p": "{canary}"}}, "canary"), 401),
    Case("value-compressed", put(VALUE, extra=[("Content-Encoding", "gzip")]), 415),
    Case("value-chunked-by-a-reader", chunked_put(b"0\r\n\r\n", "victim"), 403),
    Case(
        "unknown-token",
        Req("GET", "/v1/auth/whoami", headers=[("Authorization", "Bearer {canary}")]),
        401,
    ),
    Case(
        "unknown-console-session",
        Req("GET", "/ui/rotations", headers=[("Cookie", "kmsd_console=kmsdc.{canary}")]),
        401,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused(target: Target, case: Case) -> None:
    target.check(KLASS, case)
