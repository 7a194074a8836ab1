"""structlog set-up: JSON for ``serve``, readable for ``dev``; values never reach a line."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

# Field names that could carry a secret value or a credential, compared without case or
# underscores (so SecretString and secret_string are one name). Dropped from every event, at
# any depth, whatever the caller meant: a log line is the wrong place for any of them.
REDACTED_FIELDS = frozenset(
    {
        "value",
        "valueb64",
        "secret",
        "secretstring",
        "secretbinary",
        "plaintext",
        "password",
        "token",
        "authorization",
        "credentials",
        "secretaccesskey",
        "sessiontoken",
        "body",
    }
)


def _redacted(key: object) -> bool:
    return isinstance(key, str) and key.lower().replace("_", "") in REDACTED_FIELDS


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if not _redacted(k)}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def drop_secret_fields(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Processor: remove any field, at any depth, whose name says it may hold a value."""
    for key in list(event):
        if _redacted(key):
            del event[key]
        else:
            event[key] = _scrub(event[key])
    return event


def configure(fmt: str = "json", level: int = logging.INFO) -> None:
    """Configure structlog once for the process."""
    # JSON lines are rendered by orjson straight to bytes: one line per request is on the
    # hot path of a woken fleet (bench/README.md measured the stdlib renderer at ~30 % of
    # kmsd's CPU while answering 10,000 polls).
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=orjson.dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    factory: Any = (
        structlog.BytesLoggerFactory(sys.stderr.buffer)
        if fmt == "json"
        else structlog.PrintLoggerFactory(sys.stderr)
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
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
