"""The one error hierarchy: every failure a client may see is a KmsError.

Each class carries a stable ``code`` (the last part of the problem ``type`` URI), the HTTP
status it maps to, and a ``detail`` written for the person reading it. Details never contain a
secret value: callers pass names and paths, never payloads.
"""

from __future__ import annotations

from typing import Any, ClassVar


class KmsError(Exception):
    """Base for every error that crosses the API boundary."""

    code: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"
    http_status: ClassVar[int] = 500

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        # Response headers that go with the problem (e.g. Retry-After).
        self.headers: dict[str, str] = {}

    def problem(self) -> dict[str, Any]:
        """Return the RFC 9457 problem document for this error."""
        # Extension members never override the standard ones.
        return {
            **self.extra,
            "type": f"https://kmsd.dev/problems/{self.code}",
            "title": self.title,
            "status": self.http_status,
            "detail": self.detail,
        }


class InvalidInput(KmsError):
    code = "invalid-input"
    title = "Invalid input"
    http_status = 400


class Unauthenticated(KmsError):
    code = "unauthenticated"
    title = "Authentication required"
    http_status = 401


class LoginRejected(Unauthenticated):
    code = "login-rejected"
    title = "Sign-in request rejected"


class Forbidden(KmsError):
    code = "forbidden"
    title = "Forbidden"
    http_status = 403


class NotFound(KmsError):
    code = "not-found"
    title = "Not found"
    http_status = 404


class MethodNotAllowed(KmsError):
    code = "method-not-allowed"
    title = "Method not allowed"
    http_status = 405


class Conflict(KmsError):
    code = "conflict"
    title = "Conflict"
    http_status = 409


class ReportsUnknown(Conflict):
    """A watch sent the digest of reports kmsd does not hold: send the reports in full."""

    code = "reports-unknown"
    title = "Reports unknown"


class PayloadTooLarge(KmsError):
    code = "payload-too-large"
    title = "Payload too large"
    http_status = 413


class UnsupportedMediaType(KmsError):
    code = "unsupported-media-type"
    title = "Unsupported media type"
    http_status = 415


class TooManyRequests(KmsError):
    code = "too-many-requests"
    title = "Too many requests"
    http_status = 429

    def __init__(self, detail: str, *, retry_after: int | None = None, **extra: Any) -> None:
        if retry_after is None:
            super().__init__(detail, **extra)
        else:
            super().__init__(detail, retry_after=retry_after, **extra)
        self.headers = {"Retry-After": str(retry_after or 5)}


class UpstreamError(KmsError):
    """AWS (SM, KMS, STS) refused or failed; nothing was recorded on our side."""

    code = "upstream-error"
    title = "AWS request failed"
    http_status = 502


class Unavailable(KmsError):
    code = "unavailable"
    title = "Service unavailable"
    http_status = 503
    # Clients back off this long (seconds) before trying again, any replica.
    retry_after_s: ClassVar[int] = 2

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers = {"Retry-After": str(self.retry_after_s)}


class ShuttingDown(Unavailable):
    """This replica is stopping; the client should retry after ``Retry-After`` seconds."""

    code = "shutting-down"
    title = "Replica shutting down"

    def __init__(
        self,
        detail: str = "this kmsd replica is restarting; retry (any replica) after Retry-After",
        *,
        retry_after: int | None = None,
        **extra: Any,
    ) -> None:
        if retry_after is None:
            super().__init__(detail, **extra)
        else:
            super().__init__(detail, retry_after=retry_after, **extra)
            self.headers = {"Retry-After": str(retry_after)}


class ConfigError(Exception):
    """Start-up configuration is missing or malformed (never reaches HTTP)."""


class FencedOut(Conflict):
    """A leader-only change from a replica that is no longer the leader (its epoch is old)."""

    code = "fenced"
    title = "Not the leader"


class WebhooksNotConfigured(Conflict):
    """No KMS HMAC key is configured, so a hook cannot get a key kmsd could sign with.

    409, not 503: nothing transient is wrong and no retry can succeed until an operator
    changes kmsd's configuration (clients retry a 503); the request conflicts with how this
    server is set up, and the problem names the missing setting.
    """

    code = "webhooks-not-configured"
    title = "Webhooks are not configured"
