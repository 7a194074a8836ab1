"""Forward a checked sign-in request to kmsd's configured STS endpoint."""

from __future__ import annotations

from xml.etree import ElementTree

import aiohttp
import structlog

from kmsd.domain.signin import LoginRequest, forwarded_headers
from kmsd.errors import LoginRejected, UpstreamError

log = structlog.get_logger(__name__)

_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"
# STS answers in well under a second; a slow STS must not hold sign-ins for long.
STS_TIMEOUT = aiohttp.ClientTimeout(total=10)
# Headers aiohttp computes itself for the (identical) configured URL and body.
_HOP_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding"})


async def caller_arn(http: aiohttp.ClientSession, sts_endpoint: str, req: LoginRequest) -> str:
    """Send ``req`` to ``sts_endpoint`` (never to a host from the request) and return the ARN."""
    headers = forwarded_headers(req.headers, _HOP_HEADERS)
    try:
        async with http.post(
            sts_endpoint.rstrip("/") + "/", data=req.body, headers=headers, timeout=STS_TIMEOUT
        ) as resp:
            text = await resp.text()
            status = resp.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise UpstreamError(f"could not reach STS: {type(exc).__name__}") from None
    if status in (400, 403):
        log.info("sts_refused_login", status=status, aws_error=_error_code(text))
        raise LoginRejected("STS refused the signed request (bad or expired signature?)")
    if status != 200:
        raise UpstreamError(f"STS answered {status}")
    try:
        root = ElementTree.fromstring(text)  # noqa: S314 - STS is our configured endpoint
    except ElementTree.ParseError:
        raise UpstreamError("STS answered with something that is not XML") from None
    arn = root.findtext(f"{_NS}GetCallerIdentityResult/{_NS}Arn")
    if not arn:
        raise UpstreamError("STS answer carries no caller ARN")
    return arn


def _error_code(text: str) -> str:
    try:
        root = ElementTree.fromstring(text)  # noqa: S314 - STS is our configured endpoint
    except ElementTree.ParseError:
        return "unparseable"
    return root.findtext(f".//{_NS}Code") or root.findtext(".//Code") or "unknown"
