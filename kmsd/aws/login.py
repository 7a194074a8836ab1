"""Client side of sign-in: sign a GetCallerIdentity with the caller's own credentials.

Used by kmsctl (and later kmsagent). The credentials never leave this process: only the signed
request does, and it is good for one thing (identifying the caller to this kmsd), once, within
15 minutes. SigV4 is deterministic: the same credentials signing the same request in the same
second give the same signature, which kmsd would refuse as a replay (kmsd.domain.signin). A
random signed ``X-Kmsd-Nonce`` makes every signing its own sign-in.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from typing import Any

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

LOGIN_BODY = "Action=GetCallerIdentity&Version=2011-06-15"


def sign_login(
    credentials: Any, *, region: str, sts_endpoint: str, server_id: str
) -> dict[str, str]:
    """Return the ``POST /v1/auth/aws/login`` body for ``credentials``."""
    url = sts_endpoint.rstrip("/") + "/"
    request = AWSRequest(
        method="POST",
        url=url,
        data=LOGIN_BODY,
        headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "X-Kmsd-Server-Id": server_id,
            "X-Kmsd-Nonce": secrets.token_urlsafe(16),
        },
    )
    SigV4Auth(credentials, "sts", region).add_auth(request)
    headers = {k: [v] for k, v in request.headers.items()}
    return {
        "iam_http_request_method": "POST",
        "iam_request_url": _b64(url.encode()),
        "iam_request_body": _b64(LOGIN_BODY.encode()),
        "iam_request_headers": _b64(orjson.dumps(headers)),
    }


def sts_endpoint_from_env(region: str, env: Mapping[str, str]) -> str:
    """Where to send the login's GetCallerIdentity: kmsd forwards it only to its own STS."""
    return (
        env.get("KMSD_STS_ENDPOINT")
        or env.get("AWS_ENDPOINT_URL_STS")
        or env.get("AWS_ENDPOINT_URL")
        or f"https://sts.{region}.amazonaws.com"
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
