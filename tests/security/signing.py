"""Sign-in bodies signed with botocore directly, as any client could build them.

The suite does not use kmsd's own client code to sign (it also runs against older trees):
``signed_body`` is a Vault-style ``POST /v1/auth/aws/login`` body for a GetCallerIdentity
signed with SigV4, and ``headers_of``/``with_headers`` let a case tamper with the header map
the way whoever holds a captured body can (unsigned headers change nothing the signature
covers).
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.conftest import REGION, SERVER_ID, Identity

LOGIN_BODY = "Action=GetCallerIdentity&Version=2011-06-15"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def signed_body(who: Identity, sts_endpoint: str) -> dict[str, str]:
    """A fresh signed sign-in body for ``who`` (a random signed nonce: one signature each)."""
    url = sts_endpoint.rstrip("/") + "/"
    request = AWSRequest(
        method="POST",
        url=url,
        data=LOGIN_BODY,
        headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "X-Kmsd-Server-Id": SERVER_ID,
            "X-Kmsd-Nonce": secrets.token_urlsafe(16),
        },
    )
    SigV4Auth(Credentials(who.access_key, who.secret_key), "sts", REGION).add_auth(request)
    return {
        "iam_http_request_method": "POST",
        "iam_request_url": _b64(url.encode()),
        "iam_request_body": _b64(LOGIN_BODY.encode()),
        "iam_request_headers": _b64(
            json.dumps({k: [v] for k, v in request.headers.items()}).encode()
        ),
    }


def headers_of(body: dict[str, str]) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(body["iam_request_headers"]))
    return decoded


def with_headers(body: dict[str, str], headers: dict[str, Any] | bytes) -> dict[str, str]:
    """``body`` with its header map replaced (a dict, or raw bytes for non-JSON cases)."""
    raw = headers if isinstance(headers, bytes) else json.dumps(headers).encode()
    return {**body, "iam_request_headers": _b64(raw)}
