"""Sign-in request checks (kmsd.domain.signin) against bodies signed by kmsd.aws.login."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from botocore.credentials import Credentials

from kmsd.aws.login import LOGIN_BODY, sign_login
from kmsd.domain.signin import (
    LoginRequest,
    Principal,
    check_login,
    forwarded_headers,
    principal_from_arn,
    replay_key,
)
from kmsd.errors import InvalidInput, LoginRejected

STS = "http://127.0.0.1:5000"
SERVER_ID = "srv-1"
SKEW = timedelta(minutes=15)
AMZ_DATE = "%Y%m%dT%H%M%SZ"


@dataclass
class Parts:
    """A decoded login body, to be tampered with and encoded again."""

    method: str
    url: str
    body: str
    headers: dict[str, Any]

    def encode(self) -> dict[str, str]:
        return {
            "iam_http_request_method": self.method,
            "iam_request_url": b64(self.url.encode()),
            "iam_request_body": b64(self.body.encode()),
            "iam_request_headers": b64(orjson.dumps(self.headers)),
        }

    def header_key(self, name: str) -> str:
        for key in self.headers:
            if key.lower() == name.lower():
                return key
        raise KeyError(name)

    def get(self, name: str) -> str:
        value = self.headers[self.header_key(name)]
        assert isinstance(value, list)
        assert len(value) == 1
        return str(value[0])

    def set(self, name: str, value: Any) -> None:
        try:
            key = self.header_key(name)
        except KeyError:
            key = name
        self.headers[key] = value

    def drop(self, name: str) -> None:
        del self.headers[self.header_key(name)]

    def signed_at(self) -> datetime:
        return datetime.strptime(self.get("X-Amz-Date"), AMZ_DATE).replace(tzinfo=UTC)

    def rewrite_auth(self, pattern: str, repl: str) -> None:
        new, count = re.subn(pattern, repl, self.get("Authorization"))
        assert count == 1, f"{pattern!r} not found in the Authorization header"
        self.set("Authorization", [new])


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def decode(doc: dict[str, str]) -> Parts:
    return Parts(
        method=doc["iam_http_request_method"],
        url=base64.b64decode(doc["iam_request_url"]).decode(),
        body=base64.b64decode(doc["iam_request_body"]).decode(),
        headers=orjson.loads(base64.b64decode(doc["iam_request_headers"])),
    )


@pytest.fixture(scope="module")
def signed_doc() -> dict[str, str]:
    return sign_login(
        Credentials("AKIDEXAMPLE", "secret"),
        region="us-east-1",
        sts_endpoint=STS,
        server_id=SERVER_ID,
    )


@pytest.fixture
def parts(signed_doc: dict[str, str]) -> Parts:
    return decode(signed_doc)


def check(doc: dict[str, str], now: datetime) -> None:
    check_login(
        LoginRequest.from_json(doc), sts_endpoint=STS, server_id=SERVER_ID, now=now, max_skew=SKEW
    )


def test_genuine_body_decodes(signed_doc: dict[str, str], parts: Parts) -> None:
    req = LoginRequest.from_json(signed_doc)
    assert req.method == "POST"
    assert req.url == STS + "/"
    assert req.body == LOGIN_BODY.encode()
    assert req.headers["x-kmsd-server-id"] == SERVER_ID
    assert req.headers["x-amz-date"] == parts.get("X-Amz-Date")
    assert "x-kmsd-server-id" in req.headers["authorization"]
    # Keys are folded to lower case.
    assert all(k == k.lower() for k in req.headers)


def test_genuine_body_passes(signed_doc: dict[str, str], parts: Parts) -> None:
    check(signed_doc, parts.signed_at())


@pytest.mark.parametrize(
    "offset", [timedelta(minutes=14), -timedelta(minutes=14), timedelta(0)], ids=str
)
def test_date_within_skew_passes(parts: Parts, offset: timedelta) -> None:
    # X-Amz-Date is 14 minutes old (or ahead) relative to the server's clock.
    now = parts.signed_at()
    parts.set("X-Amz-Date", [(now - offset).strftime(AMZ_DATE)])
    check(parts.encode(), now)


Tamper = Callable[[Parts], None]


def _date_shift(delta: timedelta) -> Tamper:
    def tamper(p: Parts) -> None:
        p.set("X-Amz-Date", [(p.signed_at() + delta).strftime(AMZ_DATE)])

    return tamper


def _setattr(field: str, value: str) -> Tamper:
    return lambda p: setattr(p, field, value)


def _set_header(name: str, value: Any) -> Tamper:
    return lambda p: p.set(name, value)


def _drop_header(name: str) -> Tamper:
    return lambda p: p.drop(name)


def _auth(pattern: str, repl: str) -> Tamper:
    return lambda p: p.rewrite_auth(pattern, repl)


def _duplicate_date_header(p: Parts) -> None:
    p.headers["x-amz-date"] = [p.get("X-Amz-Date")]


ACCEPTED: dict[str, Tamper] = {
    "unchanged": lambda p: None,
    "method in lower case": _setattr("method", "post"),
    "url without trailing slash": _setattr("url", STS),
    "matching Host header": _set_header("Host", ["127.0.0.1:5000"]),
    "header as bare string": _set_header("Content-Type", "application/x-www-form-urlencoded"),
}


@pytest.mark.parametrize("tamper", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_harmless_variations_pass(parts: Parts, tamper: Tamper) -> None:
    now = parts.signed_at()
    tamper(parts)
    check(parts.encode(), now)


REJECTED: dict[str, tuple[Tamper, str]] = {
    # method
    "method GET": (_setattr("method", "GET"), "must be a POST"),
    "method PUT": (_setattr("method", "PUT"), "must be a POST"),
    # URL
    "another host": (_setattr("url", "http://169.254.169.254/"), "not addressed"),
    "another port": (_setattr("url", "http://127.0.0.1:5001/"), "not addressed"),
    "real STS host": (_setattr("url", "https://sts.amazonaws.com/"), "not addressed"),
    "userinfo trick": (_setattr("url", "http://127.0.0.1:5000@evil.example/"), "not addressed"),
    "url with a path": (_setattr("url", STS + "/x"), "bare STS endpoint"),
    "url with a query": (_setattr("url", STS + "/?Action=AssumeRole"), "bare STS endpoint"),
    "url with empty query marker and query": (
        _setattr("url", STS + "?Version=2011-06-15"),
        "bare STS endpoint",
    ),
    "url with a fragment": (_setattr("url", STS + "/#frag"), "bare STS endpoint"),
    "https instead of http": (_setattr("url", "https://127.0.0.1:5000/"), "not addressed"),
    "not a URL": (_setattr("url", "127.0.0.1:5000"), "not addressed"),
    "Host header elsewhere": (_set_header("Host", ["evil.example"]), "Host header"),
    # body
    "Action=AssumeRole": (
        _setattr("body", "Action=AssumeRole&Version=2011-06-15"),
        "exactly one Action",
    ),
    "two Action params": (
        _setattr("body", "Action=GetCallerIdentity&Action=GetCallerIdentity&Version=2011-06-15"),
        "exactly one Action",
    ),
    "two different Actions": (
        _setattr("body", "Action=AssumeRole&Action=GetCallerIdentity&Version=2011-06-15"),
        "exactly one Action",
    ),
    "extra parameter": (
        _setattr("body", LOGIN_BODY + "&RoleArn=arn:aws:iam::1:role/x"),
        "must be exactly",
    ),
    "extra blank parameter": (_setattr("body", LOGIN_BODY + "&x="), "must be exactly"),
    "missing Version": (_setattr("body", "Action=GetCallerIdentity"), "must be exactly"),
    "other Version": (
        _setattr("body", "Action=GetCallerIdentity&Version=2099-01-01"),
        "must be exactly",
    ),
    "empty body": (_setattr("body", ""), "exactly one Action"),
    "non-form body": (_setattr("body", "Action"), "not a form-encoded"),
    "non-ASCII body": (
        _setattr("body", "Action=GetCallerIdentität&Version=2011-06-15"),
        "not a form-encoded",
    ),
    "JSON body": (_setattr("body", '{"Action": "GetCallerIdentity"}'), "not a form-encoded"),
    # server id
    "missing X-Kmsd-Server-Id": (_drop_header("X-Kmsd-Server-Id"), "does not match"),
    "server id not signed": (_auth(r";x-kmsd-server-id(?=,)", ""), "covered by the signature"),
    "wrong server id": (_set_header("X-Kmsd-Server-Id", ["srv-2"]), "does not match"),
    "server id in another case": (_set_header("X-Kmsd-Server-Id", ["SRV-1"]), "does not match"),
    "empty server id": (_set_header("X-Kmsd-Server-Id", [""]), "does not match"),
    # date
    "date 16 minutes before now": (_date_shift(-timedelta(minutes=16)), "stale"),
    "date 16 minutes after now": (_date_shift(timedelta(minutes=16)), "stale"),
    "date 15 minutes 1 second old": (_date_shift(-timedelta(minutes=15, seconds=1)), "stale"),
    "date a day old": (_date_shift(-timedelta(days=1)), "stale"),
    "malformed date (ISO)": (
        _set_header("X-Amz-Date", ["2025-01-01T00:00:00Z"]),
        "YYYYMMDDTHHMMSSZ",
    ),
    "malformed date (no Z)": (_set_header("X-Amz-Date", ["20250101T000000"]), "YYYYMMDDTHHMMSSZ"),
    "malformed date (words)": (_set_header("X-Amz-Date", ["yesterday"]), "YYYYMMDDTHHMMSSZ"),
    "empty date": (_set_header("X-Amz-Date", [""]), "YYYYMMDDTHHMMSSZ"),
    "missing date header": (_drop_header("X-Amz-Date"), "YYYYMMDDTHHMMSSZ"),
    "date not signed": (_auth(r"x-amz-date;", ""), "covered by the signature"),
    # Authorization
    "no Authorization header": (_drop_header("Authorization"), "no AWS SigV4 Authorization"),
    "empty Authorization": (_set_header("Authorization", [""]), "no AWS SigV4 Authorization"),
    "SigV2 Authorization": (
        _set_header("Authorization", ["AWS AKIDEXAMPLE:c2lnbmF0dXJl"]),
        "no AWS SigV4 Authorization",
    ),
    "truncated signature": (
        _auth(r"Signature=[0-9a-f]{64}", "Signature=abc"),
        "no AWS SigV4 Authorization",
    ),
    "scope not /sts/ (iam)": (
        _auth(r"/sts/aws4_request", "/iam/aws4_request"),
        "not signed for the STS service",
    ),
    "scope not /sts/ (s3)": (
        _auth(r"/sts/aws4_request", "/s3/aws4_request"),
        "not signed for the STS service",
    ),
    # header encoding
    "header with two values": (
        _set_header("X-Kmsd-Server-Id", ["a", "b"]),
        "exactly one string value",
    ),
    "server id as two equal values": (
        _set_header("X-Kmsd-Server-Id", [SERVER_ID, SERVER_ID]),
        "exactly one string value",
    ),
    "header with no value": (_set_header("X-Amz-Date", []), "exactly one string value"),
    "header with a number": (_set_header("X-Amz-Date", [20250101]), "exactly one string value"),
    "header given twice in two cases": (_duplicate_date_header, "more than once"),
    # headers that change how STS reads the body, not covered by the signature
    "unsigned Content-Encoding": (
        _set_header("Content-Encoding", ["gzip"]),
        "content-encoding must be covered by the signature",
    ),
    "unsigned Transfer-Encoding": (
        _set_header("Transfer-Encoding", ["chunked"]),
        "transfer-encoding must be covered by the signature",
    ),
}


@pytest.mark.parametrize(("tamper", "reason"), REJECTED.values(), ids=REJECTED.keys())
def test_tampered_request_is_rejected(parts: Parts, tamper: Tamper, reason: str) -> None:
    now = parts.signed_at()
    tamper(parts)
    with pytest.raises(LoginRejected, match=re.escape(reason)) as info:
        check(parts.encode(), now)
    problem = info.value.problem()
    assert problem["status"] == 401
    assert problem["type"].endswith("/login-rejected")


def test_wrong_endpoint_names_the_expected_one(parts: Parts) -> None:
    now = parts.signed_at()
    parts.url = "http://evil.example/"
    with pytest.raises(LoginRejected) as info:
        check(parts.encode(), now)
    assert info.value.extra == {"expected_endpoint": STS}


def test_signed_for_another_server_id_is_rejected() -> None:
    doc = sign_login(
        Credentials("AKIDEXAMPLE", "secret"), region="us-east-1", sts_endpoint=STS, server_id="x"
    )
    with pytest.raises(LoginRejected, match="does not match"):
        check(doc, decode(doc).signed_at())


def test_signed_for_another_endpoint_is_rejected() -> None:
    doc = sign_login(
        Credentials("AKIDEXAMPLE", "secret"),
        region="us-east-1",
        sts_endpoint="https://sts.us-east-1.amazonaws.com",
        server_id=SERVER_ID,
    )
    with pytest.raises(LoginRejected, match="STS endpoint"):
        check(doc, decode(doc).signed_at())


def _field(name: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(name, value)


def _drop_field(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.pop(name)


MALFORMED: dict[str, Callable[[dict[str, Any]], None]] = {
    "url not base64": _field("iam_request_url", "!!!not base64!!!"),
    "body not base64": _field("iam_request_body", "QWN0aW9u*"),
    "headers not base64": _field("iam_request_headers", "e30"),  # missing padding
    "headers not JSON": _field("iam_request_headers", b64(b"{not json")),
    "headers a JSON list": _field("iam_request_headers", b64(b'[["Host", "x"]]')),
    "headers a JSON string": _field("iam_request_headers", b64(b'"x"')),
    "url non-ASCII text": _field("iam_request_url", "aHR0cDovL€"),
    "url too large": _field("iam_request_url", "A" * (64 * 1024)),
    "method missing": _drop_field("iam_http_request_method"),
    "headers missing": _drop_field("iam_request_headers"),
    "method not a string": _field("iam_http_request_method", 1),
    "body not a string": _field("iam_request_body", ["QQ=="]),
}


@pytest.mark.parametrize("mangle", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_body_is_invalid_input(
    signed_doc: dict[str, str], mangle: Callable[[dict[str, Any]], None]
) -> None:
    doc: dict[str, Any] = dict(signed_doc)
    mangle(doc)
    with pytest.raises(InvalidInput) as info:
        LoginRequest.from_json(doc)
    assert info.value.http_status == 400


ARNS = {
    "assumed role drops the session": (
        "arn:aws:sts::123456789012:assumed-role/deploy/i-0abc@example",
        "arn:aws:iam::123456789012:role/deploy",
    ),
    "assumed role without session": (
        "arn:aws:sts::123456789012:assumed-role/deploy",
        "arn:aws:iam::123456789012:role/deploy",
    ),
    "iam user stays": (
        "arn:aws:iam::123456789012:user/alice",
        "arn:aws:iam::123456789012:user/alice",
    ),
    "iam user with a path stays": (
        "arn:aws:iam::123456789012:user/team/alice",
        "arn:aws:iam::123456789012:user/team/alice",
    ),
    "root": ("arn:aws:iam::123456789012:root", "arn:aws:iam::123456789012:root"),
    "aws-cn partition": (
        "arn:aws-cn:sts::210987654321:assumed-role/ops/s",
        "arn:aws-cn:iam::210987654321:role/ops",
    ),
    "aws-us-gov partition": (
        "arn:aws-us-gov:iam::210987654321:user/bob",
        "arn:aws-us-gov:iam::210987654321:user/bob",
    ),
}


@pytest.mark.parametrize(("caller", "arn"), ARNS.values(), ids=ARNS.keys())
def test_principal_from_arn(caller: str, arn: str) -> None:
    principal = principal_from_arn(caller)
    assert principal == Principal(arn=arn, caller_arn=caller, account=caller.split(":")[4])


BAD_ARNS = {
    "garbage": "not an arn",
    "empty": "",
    "short account": "arn:aws:iam::12345:user/alice",
    "other service": "arn:aws:s3:::bucket",
    "region present": "arn:aws:iam:us-east-1:123456789012:user/alice",
    "other partition": "arn:gcp:iam::123456789012:user/alice",
    "federated user": "arn:aws:sts::123456789012:federated-user/bob",
    "group": "arn:aws:iam::123456789012:group/admins",
    "instance profile": "arn:aws:iam::123456789012:instance-profile/web",
    "space in name": "arn:aws:iam::123456789012:user/al ice",
}


@pytest.mark.parametrize("caller", BAD_ARNS.values(), ids=BAD_ARNS.keys())
def test_principal_from_bad_arn_is_rejected(caller: str) -> None:
    with pytest.raises(LoginRejected):
        principal_from_arn(caller)


# Single use: the key is the SHA-256 of the SigV4 signature, and only of it.


def test_check_returns_the_signature_key_and_staleness(
    signed_doc: dict[str, str], parts: Parts
) -> None:
    signed = check_login(
        LoginRequest.from_json(signed_doc),
        sts_endpoint=STS,
        server_id=SERVER_ID,
        now=parts.signed_at(),
        max_skew=SKEW,
    )
    sig = re.search(r"Signature=([0-9a-f]{64})$", parts.get("Authorization"))
    assert sig is not None
    assert signed.replay_key == hashlib.sha256(sig[1].encode()).digest()
    assert sig[1].encode() not in signed.replay_key  # the hash, never the signature itself
    assert signed.usable_until == parts.signed_at() + SKEW


def test_unsigned_changes_keep_the_key(parts: Parts) -> None:
    # Whoever holds a captured request can add an unsigned header: still the same sign-in.
    before = replay_key(LoginRequest.from_json(parts.encode()).headers)
    parts.set("X-Unsigned-Extra", ["anything"])
    assert replay_key(LoginRequest.from_json(parts.encode()).headers) == before


def test_two_signings_have_two_keys() -> None:
    docs = [
        sign_login(
            Credentials("AKIDEXAMPLE", secret),
            region="us-east-1",
            sts_endpoint=STS,
            server_id=SERVER_ID,
        )
        for secret in ("secret-1", "secret-2")
    ]
    keys = {replay_key(LoginRequest.from_json(doc).headers) for doc in docs}
    assert len(keys) == 2


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer x", "AWS4-HMAC-SHA256 Credential=a/b/sts/aws4_request, SignedHeaders=host"],
)
def test_no_signature_no_key(authorization: str) -> None:
    with pytest.raises(LoginRejected, match="SigV4"):
        replay_key({"authorization": authorization})


def test_only_the_signature_and_what_it_covers_go_to_sts(parts: Parts) -> None:
    headers = {**parts.headers, "User-Agent": ["curl"], "X-Extra": ["1"]}
    req = LoginRequest("POST", STS + "/", b"", {k.lower(): v[0] for k, v in headers.items()})
    sent = forwarded_headers(req.headers, frozenset({"host"}))
    assert set(sent) == {"authorization", "content-type", "x-amz-date", "x-kmsd-server-id"} | (
        {"x-kmsd-nonce"} if "x-kmsd-nonce" in req.headers else set()
    )
