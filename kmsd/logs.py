"""structlog set-up: JSON for ``serve``, readable for ``dev``; values never reach a line."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Field names that could carry a secret value or a credential. Dropped from every event,
# whatever the caller meant: a log line is the wrong place for any of them.
REDACTED_FIELDS = frozenset(
    {
        "value",
        "value_b64",
        "secret",
        "secret_string",
        "secret_binary",
        "plaintext",
        "password",
        "token",
        "authorization",
        "credentials",
        "secret_access_key",
        "session_token",
        "body",
    }
)


def drop_secret_fields(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Processor: remove any field whose name says it may hold a value."""
    for key in list(event):
        if key.lower() in REDACTED_FIELDS:
            del event[key]
    return event


def configure(fmt: str = "json", level: int = logging.INFO) -> None:
    """Configure structlog once for the process."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            drop_secret_fields,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
