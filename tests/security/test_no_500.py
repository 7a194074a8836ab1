"""Class 8, inputs that once answered 500: each is the caller's mistake, and a 4xx says which.

A 500 tells an attacker where the parser breaks and pages whoever is on call; every one of
these is refused with the right 4xx and a problem+json body: control characters in a
forwarded sign-in header, bearer tokens that are not UTF-8, compressed bodies (refused
unread), ids past bigint, times at the edge of the datetime range, NUL in query parameters,
JSON nested past what any secret needs, base64 that is not ASCII, odd sign-in headers, KMS
keys that do not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.security.conftest import APP, Target
from tests.security.signing import headers_of, signed_body, with_headers
from tests.security.wire import Case, Header, Req

KLASS = "8 no 500s"
AUTH: Header = ("Authorization", "Bearer {api}")
GARBAGE = b"\x1f\x8b\x08garbage, not what the encoding says"
DEEP = b"[" * 300 + b"]" * 300


def api(method: str, path: str, body: Any = None, *extra: Header) -> Req:
    return Req(method, path, headers=[AUTH, *extra], body=body)


def compressed(path: str, encoding: str, method: str = "PUT", auth: bool = True) -> Req:
    headers: list[Header] = [("Content-Type", "application/json"), ("Content-Encoding", encoding)]
    return Req(method, path, headers=[AUTH, *headers] if auth else headers, body=GARBAGE)


def signin(tamper: Callable[[dict[str, Any]], dict[str, Any] | bytes]) -> Callable[[Target], Req]:
    """A sign-in whose header map ``tamper`` changes, signed when the case runs."""

    def build(target: Target) -> Req:
        body = signed_body(target.identities["rotator"], target.moto)
        return Req("POST", "/v1/auth/aws/login", body=with_headers(body, tamper(headers_of(body))))

    return build


def header(name: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda headers: {**headers, name: value}


def raw_headers(data: bytes) -> Callable[[dict[str, Any]], bytes]:
    return lambda _: data


CASES = [
    # forwarded sign-in headers that are not well-formed HTTP fields (once a 500 in aiohttp)
    Case("signin-header-crlf", signin(header("X-Forwarded-Extra", ["a\r\nInjected: 1"])), 401),
    Case("signin-header-lf", signin(header("X-Forwarded-Extra", ["a\nb"])), 401),
    Case("signin-header-cr", signin(header("X-Forwarded-Extra", ["a\rb"])), 401),
    Case("signin-header-nul", signin(header("X-Forwarded-Extra", ["a\x00b"])), 401),
    Case("signin-header-del", signin(header("X-Forwarded-Extra", ["a\x7fb"])), 401),
    Case("signin-header-name-space", signin(header("X Extra", ["1"])), 401),
    Case("signin-header-name-colon", signin(header("X-Extra:", ["1"])), 401),
    Case("signin-header-name-crlf", signin(header("X-A\r\nX-B", ["1"])), 401),
    Case("signin-header-name-non-ascii", signin(header("X-\u00e9", ["1"])), 401),
    Case("signin-header-name-empty", signin(header("", ["1"])), 401),
    # odd unsigned headers on a sign-in: refused or harmless, never a 500
    Case("signin-header-two-values", signin(header("X-Extra", ["1", "2"])), 401),
    Case("signin-header-no-value", signin(header("X-Extra", [])), 401),
    Case("signin-header-number", signin(header("X-Extra", [1])), 401),
    Case("signin-header-null", signin(header("X-Extra", None)), 401),
    Case("signin-header-object", signin(header("X-Extra", {"a": "b"})), 401),
    Case("signin-unsigned-content-encoding", signin(header("Content-Encoding", ["gzip"])), 401),
    Case("signin-headers-not-json", signin(raw_headers(b"\xff\xfe not json")), 400),
    Case("signin-headers-a-list", signin(raw_headers(b"[]")), 400),
    Case("signin-headers-deep", signin(raw_headers(b'{"a": ' + DEEP + b"}")), 401),
    # bearer tokens that are not UTF-8
    Case(
        "bearer-non-utf8",
        Req("GET", f"/v1/effective/{APP}", headers=[("Authorization", b"Bearer \xc3\x28")]),
        401,
    ),
    Case(
        "bearer-non-utf8-on-watch",
        Req("POST", "/v1/watch", headers=[("Authorization", b"Bearer \xff")], body={"path": APP}),
        401,
    ),
    # compressed bodies with garbage inside, also on the sign-in
    Case("gzip-on-put", compressed(f"/v1/secrets/{APP}/db", "gzip"), 415),
    Case("deflate-on-put", compressed(f"/v1/secrets/{APP}/db", "deflate"), 415),
    Case("br-on-put", compressed(f"/v1/secrets/{APP}/db", "br"), 415),
    Case("zstd-on-put", compressed(f"/v1/secrets/{APP}/db", "zstd"), 415),
    Case("gzip-on-login", compressed("/v1/auth/aws/login", "gzip", "POST", auth=False), 415),
    Case("deflate-on-login", compressed("/v1/auth/aws/login", "deflate", "POST", auth=False), 415),
    Case("br-on-login", compressed("/v1/auth/aws/login", "br", "POST", auth=False), 415),
    Case("gzip-on-rotation", compressed("/v1/rotations", "gzip", "POST"), 415),
    Case("gzip-on-binding", compressed("/v1/bindings", "gzip", "POST"), 415),
    Case("gzip-on-watch", compressed("/v1/watch", "gzip", "POST"), 415),
    # ids past bigint
    Case("binding-id-past-bigint", api("DELETE", "/v1/bindings/9999999999999999999"), 404),
    Case("binding-id-2-pow-63", api("DELETE", "/v1/bindings/9223372036854775808"), 404),
    Case("binding-id-zero", api("DELETE", "/v1/bindings/0"), 404),
    Case("binding-id-negative", api("DELETE", "/v1/bindings/-1"), 404),
    Case("rotation-id-past-bigint", api("GET", "/v1/rotations/99999999999999999999999"), 404),
    # audit filters at the edges of time
    Case(
        "audit-since-year-1-plus-14", api("GET", "/v1/audit?since=0001-01-01T00:00:00%2B14:00"), 400
    ),
    Case(
        "audit-until-year-9999-minus-14",
        api("GET", "/v1/audit?until=9999-12-31T23:59:59-14:00"),
        400,
    ),
    Case("audit-since-year-1", api("GET", "/v1/audit?since=0001-01-01T00:00:00Z"), 400),
    Case("audit-until-max", api("GET", "/v1/audit?until=9999-12-31T23:59:59.999999Z"), 400),
    Case("audit-since-no-zone", api("GET", "/v1/audit?since=2020-01-01T00:00:00"), 400),
    Case("audit-limit-huge", api("GET", "/v1/audit?limit=99999999999999999999999"), 400),
    # NUL in query parameters (PostgreSQL text cannot hold it)
    Case("nul-in-audit-principal", api("GET", "/v1/audit?principal=a%00b"), 400),
    Case("nul-in-audit-action", api("GET", "/v1/audit?action=%00"), 400),
    Case("nul-in-rotations-path", api("GET", "/v1/rotations?path=sec%00"), 400),
    Case("nul-in-query-name", api("GET", f"/v1/effective/{APP}?a%00=1"), 400),
    Case("nul-in-path", api("GET", "/v1/effective/sec/p%00y"), 400),
    # JSON nested deeper than any encoder goes (orjson stops at 255)
    Case(
        "deep-secret-value",
        api(
            "PUT",
            f"/v1/secrets/{APP}/deep",
            b'{"kind":"json","value":{"a":' + DEEP + b"}}",
            ("Content-Type", "application/json"),
        ),
        400,
    ),
    Case(
        "deep-binding",
        api(
            "POST",
            "/v1/bindings",
            b'{"principal":' + DEEP + b"}",
            ("Content-Type", "application/json"),
        ),
        400,
    ),
    Case(
        "deep-watch",
        api(
            "POST",
            "/v1/watch?timeout=0",
            b'{"held":' + DEEP + b"}",
            ("Content-Type", "application/json"),
        ),
        400,
    ),
    Case(
        "deep-login",
        Req(
            "POST",
            "/v1/auth/aws/login",
            headers=[("Content-Type", "application/json")],
            body=b'{"a":' + DEEP + b"}",
        ),
        400,
    ),
    Case(
        "deep-rotation",
        api(
            "POST",
            "/v1/rotations",
            b'{"path":"sec/pay","name":"db","value":{"a":' + DEEP + b"}}",
            ("Content-Type", "application/json"),
        ),
        400,
    ),
    # base64 that is not ASCII, on a rotation's start and a put
    Case(
        "rotation-value-b64-non-ascii",
        api("POST", "/v1/rotations", {"path": APP, "name": "db", "value_b64": "\u00e9\u00e9=="}),
        400,
    ),
    Case(
        "rotation-value-b64-fullwidth",
        api("POST", "/v1/rotations", {"path": APP, "name": "db", "value_b64": "\uff21\uff21=="}),
        400,
    ),
    Case(
        "put-value-b64-non-ascii",
        api("PUT", f"/v1/secrets/{APP}/bin", {"kind": "binary", "value_b64": "\u00e9=="}),
        400,
    ),
    # bodies JSON cannot be
    Case(
        "body-not-utf8",
        api(
            "PUT",
            f"/v1/secrets/{APP}/db",
            b'{"kind":"json","value":{"a":"\xff"}}',
            ("Content-Type", "application/json"),
        ),
        400,
    ),
    Case(
        "body-lone-surrogate",
        api(
            "PUT",
            f"/v1/secrets/{APP}/db",
            b'{"kind":"json","value":{"a":"\\ud800"}}',
            ("Content-Type", "application/json"),
        ),
        400,
    ),
    Case(
        "body-integer-past-64-bits",
        api(
            "POST",
            "/v1/watch?timeout=0",
            b'{"path":"sec/pay","path_version":99999999999999999999999}',
            ("Content-Type", "application/json"),
        ),
        400,
    ),
    Case(
        "watch-path-version-negative",
        api("POST", "/v1/watch?timeout=0", {"path": APP, "path_version": -1}),
        400,
    ),
    Case(
        "watch-timeout-exponent",
        api("POST", "/v1/watch?timeout=1e9", {"path": APP, "path_version": 0}),
        400,
    ),
    Case(
        "watch-timeout-nan",
        api("POST", "/v1/watch?timeout=nan", {"path": APP, "path_version": 0}),
        400,
    ),
    Case(
        "body-nan",
        api(
            "POST",
            "/v1/watch?timeout=0",
            b'{"path":"sec/pay","path_version":NaN}',
            ("Content-Type", "application/json"),
        ),
        400,
    ),
    Case(
        "body-not-json-type",
        api(
            "PUT",
            f"/v1/secrets/{APP}/db",
            {"kind": "json", "value": {"a": 1}},
            ("Content-Type", "text/plain"),
        ),
        415,
    ),
    # sizes past what any tree or report needs
    Case("path-too-deep", api("GET", "/v1/effective/" + "a/" * 2000 + "b"), 400),
    Case("segment-too-long", api("GET", "/v1/effective/sec/" + "a" * 5000), 400),
    Case(
        "watch-timeout-huge",
        api("POST", "/v1/watch?timeout=99999999999999999999", {"path": APP, "path_version": 0}),
        400,
    ),
    Case(
        "watch-instance-id-control",
        api(
            "POST",
            "/v1/watch?timeout=0",
            {"path": APP, "path_version": 0, "instance_id": "i-\u0007"},
        ),
        400,
    ),
    Case("audit-limit-empty", api("GET", "/v1/audit?limit="), 400),
    # a change whose body is past the 1 MiB limit, its document behind whitespace
    Case(
        "binding-grant-padded-past-1-mib",
        api(
            "POST",
            "/v1/bindings",
            b" "
            * (2 << 20)
            + b'{"principal": "arn:aws:iam::123456789012:role/padded", "path": "sec/pay",'
            b' "permission": "read"}',
            ("Content-Type", "application/json"),
        ),
        413,
    ),
    # a KMS key that does not exist
    Case(
        "unknown-cmk-alias",
        api("POST", f"/v1/datakeys/{APP}/dk1", {"cmk": "alias/no-such-key"}),
        400,
    ),
    Case(
        "unknown-cmk-id",
        api("POST", f"/v1/datakeys/{APP}/dk2", {"cmk": "00000000-0000-0000-0000-000000000000"}),
        400,
    ),
    Case(
        "unknown-cmk-arn",
        api(
            "POST",
            f"/v1/datakeys/{APP}/dk3",
            {"cmk": "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"},
        ),
        400,
    ),
    Case(
        "cmk-garbage",
        api("POST", f"/v1/datakeys/{APP}/dk4", {"cmk": "\u00e9\u0000 not a key"}),
        400,
    ),
]


@pytest.fixture(scope="module")
def secret(target: Target) -> None:
    target.call("PUT", f"/v1/secrets/{APP}/db", {"kind": "json", "value": {"p": "first"}})


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused(target: Target, secret: None, case: Case) -> None:
    target.check(KLASS, case)
