"""Sign-in request checks (Vault's AWS ``iam`` scheme).

A client proves who it is by signing an ``sts:GetCallerIdentity`` request with its own AWS
credentials and handing kmsd the *signed request* (method, URL, body, headers), never the
credentials. kmsd forwards it to STS and trusts the ARN in the answer. That is only safe if the
forwarded request can do nothing but identify the caller to *this* kmsd, now:

* the method is POST and the body is exactly ``Action=GetCallerIdentity&Version=2011-06-15``
  (one Action, no other parameters), so a signed request for another STS action is useless;
* the URL is the STS endpoint from kmsd's own configuration (kmsd never sends a request to a
  host named by the client, which would make it an SSRF proxy and let a client answer itself);
* ``X-Kmsd-Server-Id`` is present, covered by the signature (listed in SignedHeaders) and equal
  to this server's id, so a request signed for another kmsd (or another Vault-like service)
  cannot be replayed here;
* ``X-Amz-Date`` is signed and within the allowed skew, so a captured request goes stale;
* each signed request is usable once, on any replica: ``check_login`` returns the SHA-256 of its
  SigV4 ``Signature=`` value (the key) and when the request goes stale, and kmsd records the key
  before forwarding (``kmsd.db.signins``); a key already recorded is a replay and is refused,
  even when the first use failed at STS, since a signature is single-use whatever happened.
  The signature, not the whole request, is the key: an unsigned header or a re-encoding of the
  body can be changed by whoever holds the request, the signature cannot.

STS verifies the signature itself. moto does not, which is why every check above is kmsd's own.
This module only decides; ``kmsd.aws.sts`` does the forwarding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from kmsd.errors import InvalidInput, LoginRejected

SERVER_ID_HEADER = "x-kmsd-server-id"
EXPECTED_BODY = {"Action": ["GetCallerIdentity"], "Version": ["2011-06-15"]}
MAX_FIELD_BYTES = 16 * 1024
_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<sig>[0-9a-f]{64})$"
)
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ARN_RE = re.compile(
    r"^arn:(?P<part>aws[a-z-]*):(?P<svc>sts|iam)::(?P<acct>\d{12}):(?P<rest>[\w+=,.@/-]+)$"
)


@dataclass(frozen=True, slots=True)
class LoginRequest:
    """A sign-in body as decoded from the API (still untrusted)."""

    method: str
    url: str
    body: bytes
    headers: dict[str, str]

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> LoginRequest:
        """Decode the four base64 fields of the login body, refusing anything malformed."""
        fields = (
            "iam_http_request_method",
            "iam_request_url",
            "iam_request_body",
            "iam_request_headers",
        )
        for name in fields:
            if not isinstance(doc.get(name), str):
                raise InvalidInput(f"login body needs the string field {name!r}")
        url = _b64(doc["iam_request_url"], "iam_request_url").decode("utf-8", "replace")
        body = _b64(doc["iam_request_body"], "iam_request_body")
        raw_headers = _b64(doc["iam_request_headers"], "iam_request_headers")
        try:
            parsed = orjson.loads(raw_headers)
        except orjson.JSONDecodeError:
            raise InvalidInput("iam_request_headers is not base64 of a JSON object") from None
        if not isinstance(parsed, dict):
            raise InvalidInput("iam_request_headers is not base64 of a JSON object")
        headers: dict[str, str] = {}
        for key, value in parsed.items():
            # Vault sends each header as a list of values; a header given twice is ambiguous
            # (which one did STS verify?), so it is refused rather than guessed.
            values = value if isinstance(value, list) else [value]
            if len(values) != 1 or not isinstance(values[0], str):
                raise LoginRejected(f"header {key[:64]!r} must have exactly one string value")
            # The headers are forwarded to STS as they are: each must be a well-formed field
            # (an RFC 9110 token name; no control character but tab in the value).
            if not _HEADER_NAME_RE.fullmatch(key) or _CONTROL_RE.search(values[0]):
                raise LoginRejected(f"header {key[:64]!r} is not a well-formed HTTP header")
            lower = str(key).lower()
            if lower in headers:
                raise LoginRejected(f"header {key[:64]!r} is given more than once")
            headers[lower] = values[0]
        return cls(doc["iam_http_request_method"].upper(), url, body, headers)


@dataclass(frozen=True, slots=True)
class SignedLogin:
    """A sign-in request that passed every check: what makes it single-use."""

    replay_key: bytes  # SHA-256 of the SigV4 signature (the signature alone is no secret)
    usable_until: datetime  # X-Amz-Date + the allowed skew: stale afterwards anyway


@dataclass(frozen=True, slots=True)
class Principal:
    """A caller proven by STS: the ARN as STS gave it and the IAM entity it maps to."""

    arn: str
    caller_arn: str
    account: str


def check_login(
    req: LoginRequest, *, sts_endpoint: str, server_id: str, now: datetime, max_skew: timedelta
) -> SignedLogin:
    """Raise LoginRejected unless ``req`` is a fresh, signed GetCallerIdentity for us."""
    if req.method != "POST":
        raise LoginRejected("the signed request must be a POST")
    try:
        url = urlsplit(req.url)
    except ValueError:  # e.g. an unclosed [IPv6 literal
        raise LoginRejected("the signed request URL is not a URL") from None
    want = urlsplit(sts_endpoint)
    if (url.scheme, (url.netloc or "").lower()) != (want.scheme, want.netloc.lower()):
        raise LoginRejected(
            "the signed request is not addressed to this server's STS endpoint",
            expected_endpoint=sts_endpoint,
        )
    if url.path not in ("", "/") or url.query or url.fragment:
        raise LoginRejected("the signed request URL must be the bare STS endpoint ('/')")
    host = req.headers.get("host")
    if host is not None and host.lower() != want.netloc.lower():
        raise LoginRejected("the signed Host header does not match this server's STS endpoint")
    _check_body(req.body)
    signed = _signed_headers(req.headers)
    for name in sorted(BODY_HEADERS & set(req.headers) - signed):
        # STS would read another body than the one checked above.
        raise LoginRejected(f"{name} must be covered by the signature (or left out)")
    if SERVER_ID_HEADER not in signed:
        raise LoginRejected("X-Kmsd-Server-Id must be present and covered by the signature")
    if req.headers.get(SERVER_ID_HEADER) != server_id:
        raise LoginRejected("X-Kmsd-Server-Id does not match this server's id")
    if "x-amz-date" not in signed:
        raise LoginRejected("X-Amz-Date must be present and covered by the signature")
    try:
        signed_at = datetime.strptime(req.headers["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(
            tzinfo=UTC
        )
    except (KeyError, ValueError):
        raise LoginRejected("X-Amz-Date is missing or not in the form YYYYMMDDTHHMMSSZ") from None
    if abs(now - signed_at) > max_skew:
        raise LoginRejected(
            f"the signed request is stale: X-Amz-Date must be within "
            f"{int(max_skew.total_seconds() // 60)} minutes of the server's clock"
        )
    return SignedLogin(replay_key(req.headers), signed_at + max_skew)


def _check_body(body: bytes) -> None:
    try:
        text = body.decode("ascii")
        form = parse_qs(text, keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise LoginRejected("the signed body is not a form-encoded STS request") from None
    if form.get("Action") != ["GetCallerIdentity"]:
        raise LoginRejected("the signed request must carry exactly one Action=GetCallerIdentity")
    if form != EXPECTED_BODY:
        raise LoginRejected(
            "the signed body must be exactly Action=GetCallerIdentity&Version=2011-06-15"
        )


def _signed_headers(headers: Mapping[str, str]) -> frozenset[str]:
    match = _AUTH_RE.match(headers.get("authorization", ""))
    if match is None:
        raise LoginRejected("the request carries no AWS SigV4 Authorization header")
    if not match["cred"].endswith("/sts/aws4_request"):
        raise LoginRejected("the request is not signed for the STS service")
    return frozenset(match["signed"].split(";"))


# Headers that change how a body is read: present only if the signature covers them.
BODY_HEADERS = frozenset({"content-encoding", "content-type", "transfer-encoding"})


def forwarded_headers(headers: Mapping[str, str], hop: frozenset[str]) -> dict[str, str]:
    """What goes on to STS: the signature and the headers it covers, nothing unsigned (an
    unsigned Content-Encoding would make STS read another body than the one checked here)."""
    signed = _signed_headers(headers) | {"authorization"}
    return {k: v for k, v in headers.items() if k in signed and k not in hop}


def claimed_key_id(headers: Mapping[str, str]) -> str:
    """The access key id a sign-in request claims (for the audit row of a refusal)."""
    match = _AUTH_RE.match(headers.get("authorization", ""))
    return match["cred"].split("/", 1)[0][:128] if match else ""


def replay_key(headers: Mapping[str, str]) -> bytes:
    """The SHA-256 of the request's SigV4 signature: one key per signed sign-in."""
    match = _AUTH_RE.match(headers.get("authorization", ""))
    if match is None:
        raise LoginRejected("the request carries no AWS SigV4 Authorization header")
    # The pattern admits lower-case hex only, so one signature has exactly one spelling.
    return hashlib.sha256(match["sig"].encode("ascii")).digest()


def principal_from_arn(caller_arn: str) -> Principal:
    """Map an STS caller ARN to the IAM entity it stands for.

    ``arn:aws:sts::A:assumed-role/R/session`` becomes ``arn:aws:iam::A:role/R``: a session name
    is chosen by whoever assumed the role, so only the role is an identity. (An assumed-role ARN
    omits the role's IAM path; bindings therefore match role names, as Vault's do.)
    """
    match = _ARN_RE.match(caller_arn)
    if match is None:
        raise LoginRejected("STS answered with an ARN kmsd does not understand")
    part, acct, rest = match["part"], match["acct"], match["rest"]
    kind, _, tail = rest.partition("/")
    if kind == "assumed-role":
        role = tail.split("/", 1)[0]
        return Principal(f"arn:{part}:iam::{acct}:role/{role}", caller_arn, acct)
    if kind in ("user", "role", "root") or rest == "root":
        return Principal(f"arn:{part}:iam::{acct}:{rest}", caller_arn, acct)
    raise LoginRejected(f"principals of type {kind!r} cannot sign in")


def _b64(raw: str, name: str) -> bytes:
    if len(raw) > MAX_FIELD_BYTES * 2:
        raise InvalidInput(f"{name} is too large")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{name} is not valid base64") from None
