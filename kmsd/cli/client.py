"""A small synchronous kmsd client for kmsctl, and its token cache (one file, mode 0600).

Every way a call can fail ends as a ``CliError`` with a sentence for the operator: an error
answer (``HttpError``, with its status and any ``Retry-After``), no answer at all
(``Unreachable``: refused, reset, DNS, timeout, a connection cut mid-answer) or an answer that
is not JSON. kmsctl's verbs never see a socket or urllib exception.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from kmsd.aws.login import sign_login, sts_endpoint_from_env

TIMEOUT_S = 30


class CliError(Exception):
    """A failure to report on stderr with exit status 1."""


class HttpError(CliError):
    """kmsd, or a proxy in front of it, answered with an error status."""

    def __init__(
        self, message: str, status: int, *, retry_after: float | None, detail: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.detail = detail


class Unreachable(CliError):
    """No (complete) answer: refused, reset, unresolvable, timed out or cut mid-answer."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(f"{message}: {reason}")
        self.reason = reason


# Answers that mean "this server, or the one behind this proxy, cannot serve you now".
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


def transient(exc: CliError) -> bool:
    """True for a failure that retrying later may cure: no answer, or a 429/5xx."""
    return isinstance(exc, Unreachable) or (
        isinstance(exc, HttpError) and exc.status in TRANSIENT_STATUSES
    )


class Client:
    """A small synchronous kmsd client (one sign-in per process)."""

    def __init__(self, addr: str, server_id: str) -> None:
        self.addr = addr.rstrip("/")
        self.server_id = server_id
        self._token: str | None = None
        # Long polls are held up to 180 s by kmsd; kmsctl watch raises this past its hold.
        self.timeout: float = TIMEOUT_S

    @classmethod
    def from_env(cls) -> Client:
        addr = os.environ.get("KMSD_ADDR")
        server_id = os.environ.get("KMSD_SERVER_ID")
        if not addr or not server_id:
            raise CliError("set KMSD_ADDR and KMSD_SERVER_ID (with kmsd dev: . .kmsd-dev/env)")
        parts = urlsplit(addr)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CliError(f"KMSD_ADDR must be a URL such as http://127.0.0.1:8700, not {addr!r}")
        return cls(addr, server_id)

    def login(self) -> dict[str, Any]:
        import botocore.exceptions
        import botocore.session

        try:
            session = botocore.session.get_session()
            credentials = session.get_credentials()
            region = session.get_config_variable("region") or "us-east-1"
            frozen = credentials.get_frozen_credentials() if credentials is not None else None
        except botocore.exceptions.BotoCoreError as exc:
            raise CliError(f"cannot load your AWS credentials: {exc}") from None
        if frozen is None:
            raise CliError("no AWS credentials found (environment, profile or instance role)")
        sts = sts_endpoint_from_env(region, os.environ)
        body = sign_login(frozen, region=region, sts_endpoint=sts, server_id=self.server_id)
        answer = self._send("POST", "/v1/auth/aws/login", body, auth=False)
        if not isinstance(answer, dict) or not isinstance(answer.get("token"), str):
            raise CliError(f"kmsd at {self.addr} answered the sign-in without a token")
        self._token = answer["token"]
        return answer

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one call, signing in first if needed and again (once) if the token is refused."""
        fresh = False
        if self._token is None:
            self._token = load_cached_token(self.addr)
        if self._token is None:
            self.login()
            fresh = True
        try:
            return self._send(method, path, body, auth=True)
        except HttpError as exc:
            if exc.status != 401 or fresh:
                raise
        # The token expired, was revoked or was issued to another address: sign in again, once.
        self.login()
        return self._send(method, path, body, auth=True)

    def _send(self, method: str, path: str, body: dict[str, Any] | None, *, auth: bool) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.addr + path, data=data, method=method)  # noqa: S310
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self._token}")
        # urllib wraps failures to connect in URLError, but not those after the request went
        # out (RemoteDisconnected, IncompleteRead, a reset or a timeout while reading): the
        # order of the except clauses matters, HTTPError < URLError < OSError.
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                status = resp.status
                content_type = resp.headers.get_content_type()
                raw = resp.read()
        except urllib.error.HTTPError as err:
            if err.code == 304:
                return None
            raise _http_error(err) from None
        except urllib.error.URLError as err:
            raise Unreachable(
                f"cannot reach kmsd at {self.addr}", _why(err.reason, self.timeout)
            ) from None
        except (http.client.HTTPException, OSError) as err:
            raise Unreachable(
                f"lost the connection to kmsd at {self.addr}", _why(err, self.timeout)
            ) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise CliError(
                f"{self.addr} answered {status} with {content_type}, not JSON "
                "(is KMSD_ADDR the address of kmsd?)"
            ) from None


# Fixed phrases for the common network failures, most specific first (RemoteDisconnected is a
# ConnectionResetError).
_PHRASES: tuple[tuple[type[BaseException], str], ...] = (
    (ConnectionRefusedError, "connection refused"),
    (http.client.RemoteDisconnected, "the server closed the connection without answering"),
    (http.client.IncompleteRead, "the answer was cut short"),
    (ConnectionResetError, "connection reset"),
)


def _why(reason: object, timeout: float) -> str:
    """A short phrase for a network failure (no exception class names, no tracebacks)."""
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve the host name ({reason.strerror or reason})"
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    phrase = next((text for kind, text in _PHRASES if isinstance(reason, kind)), None)
    if phrase is None and isinstance(reason, OSError):
        phrase = reason.strerror
    return phrase or str(reason) or type(reason).__name__


def _http_error(err: urllib.error.HTTPError) -> HttpError:
    """The problem document of an error answer as one line, with what a retry needs."""
    retry_after = parse_retry_after(err.headers.get("Retry-After") if err.headers else None)
    try:
        doc = json.loads(err.read())
    except (ValueError, OSError, http.client.HTTPException):
        doc = None
    if isinstance(doc, dict) and ("title" in doc or "detail" in doc):
        detail = str(doc.get("detail", ""))
        message = f"{doc.get('title', err.reason)} ({err.code}): {detail}"
        return HttpError(message, err.code, retry_after=retry_after, detail=detail)
    return HttpError(f"HTTP {err.code} {err.reason}", err.code, retry_after=retry_after)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds (delay-seconds or an HTTP date); None if absent or odd."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def read_input(name: str, flag: str) -> bytes:
    """The bytes of ``--file NAME`` ('-' is stdin), or a CliError that names the file."""
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise CliError(f"{flag} {name}: {exc.strerror or exc}") from None


def _token_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kmsctl" / "tokens.json"


def load_cached_token(addr: str) -> str | None:
    """The cached session token for ``addr`` if it has not expired."""
    path = _token_file()
    try:
        doc = json.loads(path.read_text())
        entry = doc[addr]
        if datetime.fromisoformat(entry["expires_at"]) <= datetime.now(UTC) + timedelta(minutes=1):
            return None
        return str(entry["token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def forget_cached_token(addr: str) -> None:
    path = _token_file()
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(doc, dict) and doc.pop(addr, None) is not None:
        _write_private(path, doc)


def _write_private(path: Path, doc: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(doc, out)
        path.chmod(0o600)
    except OSError as exc:
        raise CliError(f"cannot write the token cache {path}: {exc.strerror or exc}") from None


def save_cached_token(addr: str, token: str, expires_at: str) -> None:
    """Cache a session token (file mode 0600, folder 0700) until it expires."""
    path = _token_file()
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            doc = {}
    except (OSError, ValueError):
        doc = {}
    doc[addr] = {"token": token, "expires_at": expires_at}
    _write_private(path, doc)


def quote_path(path: str) -> str:
    return quote(path, safe="/")
