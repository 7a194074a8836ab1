"""A small synchronous kmsd client for kmsctl, and its token cache (one file, mode 0600)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kmsd.aws.login import sign_login, sts_endpoint_from_env

TIMEOUT_S = 30


class CliError(Exception):
    """A failure to report on stderr with exit status 1."""


class Client:
    """A small synchronous kmsd client (one sign-in per process)."""

    def __init__(self, addr: str, server_id: str) -> None:
        self.addr = addr.rstrip("/")
        self.server_id = server_id
        self._token: str | None = None
        self._from_cache: bool | None = None
        # Long polls are held up to 180 s by kmsd; wait a little longer than that.
        self.timeout = TIMEOUT_S

    @classmethod
    def from_env(cls) -> Client:
        addr = os.environ.get("KMSD_ADDR")
        server_id = os.environ.get("KMSD_SERVER_ID")
        if not addr or not server_id:
            raise CliError("set KMSD_ADDR and KMSD_SERVER_ID (with kmsd dev: . .kmsd-dev/env)")
        return cls(addr, server_id)

    def login(self) -> dict[str, Any]:
        import botocore.session

        session = botocore.session.get_session()
        credentials = session.get_credentials()
        if credentials is None:
            raise CliError("no AWS credentials found (environment, profile or instance role)")
        region = session.get_config_variable("region") or "us-east-1"
        sts = sts_endpoint_from_env(region, os.environ)
        body = sign_login(
            credentials.get_frozen_credentials(),
            region=region,
            sts_endpoint=sts,
            server_id=self.server_id,
        )
        answer: dict[str, Any] = self._send("POST", "/v1/auth/aws/login", body, auth=False)
        self._token = answer["token"]
        self._from_cache = False
        return answer

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if self._token is None:
            self._token = load_cached_token(self.addr)
            self._from_cache = self._token is not None
        if self._token is None:
            self.login()
        try:
            return self._send(method, path, body, auth=True)
        except CliError as exc:
            if "(401)" not in str(exc) or not self._from_cache:
                raise
        # The cached token was revoked or issued to another IP: sign in again, once.
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
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            if err.code == 304:
                return None
            raise CliError(_problem_text(err)) from None
        except urllib.error.URLError as err:
            raise CliError(f"cannot reach kmsd at {self.addr}: {err.reason}") from None


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
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(doc, out)
    path.chmod(0o600)


def save_cached_token(addr: str, token: str, expires_at: str) -> None:
    """Cache a session token (file mode 0600, folder 0700) until it expires."""
    path = _token_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            doc = {}
    except (OSError, ValueError):
        doc = {}
    doc[addr] = {"token": token, "expires_at": expires_at}
    _write_private(path, doc)


def _problem_text(err: urllib.error.HTTPError) -> str:
    try:
        doc = json.loads(err.read())
        return f"{doc.get('title', err.reason)} ({err.code}): {doc.get('detail', '')}"
    except (ValueError, AttributeError):
        return f"HTTP {err.code} {err.reason}"


def quote_path(path: str) -> str:
    return quote(path, safe="/")
