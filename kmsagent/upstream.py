"""The agent's side of kmsd's API: sign-in, effective sets and long polls.

Sign-in sends a *signed* ``sts:GetCallerIdentity`` request, never the credentials; the session
token it yields is renewed a few minutes before it expires and at once on a 401.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import structlog
from botocore.credentials import ReadOnlyCredentials

from kmsagent.pacing import retry_after
from kmsd.aws.login import sign_login

log = structlog.get_logger(__name__)

# Sign in again this long before the session token expires.
RENEW_BEFORE_S = 300.0
REQUEST_TIMEOUT_S = 30.0


# The most the agent reads of one kmsd answer. An effective set is metadata (names, ARNs,
# version ids, data keys' ciphertexts: about 1 KiB a secret), so 8 MiB is thousands of secrets;
# a bigger answer is a bug or an attack, and reading it whole would grow the agent on every host.
MAX_ANSWER_BYTES = 8 * 1024 * 1024
_CHUNK_BYTES = 64 * 1024


class Unavailable(Exception):
    """kmsd could not be reached or answered 5xx; ``retry_after`` if it said when to retry."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Refused(Exception):
    """kmsd refused the request (403/404/400): retrying soon will not help; the text says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Kmsd:
    """One kmsd session shared by every path this agent serves."""

    def __init__(
        self,
        addr: str,
        server_id: str,
        *,
        credentials: Callable[[], Awaitable[ReadOnlyCredentials]],
        region: str,
        sts_endpoint: str,
        http: aiohttp.ClientSession,
    ) -> None:
        self._addr = addr.rstrip("/")
        self._server_id = server_id
        self._credentials = credentials
        self._region = region
        self._sts = sts_endpoint
        self._http = http
        self._token: str | None = None
        self._renew_at = 0.0
        self._login_lock = asyncio.Lock()
        self.principal: str | None = None
        self.logins = 0

    async def _login(self, stale: str | None) -> str:
        async with self._login_lock:
            # Another task may have signed in while this one waited for the lock.
            if self._token is not None and self._token != stale and time.time() < self._renew_at:
                return self._token
            body = sign_login(
                await self._credentials(),
                region=self._region,
                sts_endpoint=self._sts,
                server_id=self._server_id,
            )
            status, _, doc = await self._send("POST", "/v1/auth/aws/login", body, None, None)
            if status != 200:
                raise Refused(status, f"sign-in refused: {_detail(doc)}")
            now = time.time()
            expires = datetime.fromisoformat(doc["expires_at"]).timestamp()
            self._token = str(doc["token"])
            # A few minutes early, or at 80 % of a short session's life.
            self._renew_at = expires - min(RENEW_BEFORE_S, (expires - now) / 5)
            self.principal = str(doc["principal"])
            self.logins += 1
            log.info("signed_in", principal=self.principal, expires_at=doc["expires_at"])
            return self._token

    async def _call(
        self, method: str, path: str, body: Any = None, *, limit: float = REQUEST_TIMEOUT_S
    ) -> tuple[int, Any]:
        token = self._token
        if token is None or time.time() >= self._renew_at:
            token = await self._login(token)
        status, headers, doc = await self._send(method, path, body, token, limit)
        if status == 401:  # revoked, expired early, or issued to another address: once more
            token = await self._login(token)
            status, headers, doc = await self._send(method, path, body, token, limit)
        if status in (200, 304):
            return status, doc
        if status >= 500 or status == 429:
            raise Unavailable(f"kmsd answered {status}: {_detail(doc)}", _retry_after(headers))
        raise Refused(status, f"kmsd refused {method} {path} ({status}): {_detail(doc)}")

    async def _send(
        self, method: str, path: str, body: Any, token: str | None, limit: float | None
    ) -> tuple[int, Any, Any]:
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            async with self._http.request(
                method,
                self._addr + path,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=limit or REQUEST_TIMEOUT_S),
            ) as resp:
                raw = await _read_capped(resp)
                doc = orjson.loads(raw) if raw and resp.status != 304 else None
                return resp.status, resp.headers, doc
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            raise Unavailable(f"cannot reach kmsd at {self._addr}: {type(exc).__name__}") from None

    async def effective(self, path: str) -> dict[str, Any]:
        _, doc = await self._call("GET", f"/v1/effective/{quote(path)}")
        return dict(doc)

    async def watch(self, report: dict[str, Any], hold: float) -> dict[str, Any] | None:
        """Hold a long poll; the new effective set if the path changed, None if not."""
        status, doc = await self._call(
            "POST",
            f"/v1/watch?timeout={hold:g}",
            report,
            # kmsd shortens holds, never lengthens them; leave room for a slow answer.
            limit=hold + REQUEST_TIMEOUT_S,
        )
        return None if status == 304 else dict(doc)


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """The answer's body, refused (and its connection dropped) past ``MAX_ANSWER_BYTES``."""
    declared = resp.content_length
    body = bytearray()
    if declared is None or declared <= MAX_ANSWER_BYTES:
        async for chunk in resp.content.iter_chunked(_CHUNK_BYTES):
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                break
        else:
            return bytes(body)
    resp.close()  # never read the rest, never reuse the connection
    raise Unavailable(f"kmsd's answer is larger than {MAX_ANSWER_BYTES} bytes; not read")


def _detail(doc: Any) -> str:
    if isinstance(doc, dict):
        return str(doc.get("detail") or doc.get("title") or "no detail")
    return "no detail"


def _retry_after(headers: Any) -> float | None:
    return retry_after(headers.get("Retry-After"), time.time())
