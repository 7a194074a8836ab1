"""structlog set-up: JSON for ``serve``, readable for ``dev``; values never reach a line.

Two roads lead to kmsd's log. kmsd's own events go through structlog, whose processors drop
every field that could hold a value. aiohttp's stdlib loggers (``aiohttp.server``, ``.web``,
``.access``, ``.internal``, ...) would go around them: its parser errors print the raw request
bytes (a chunked body's JSON value in a bad trailer, a bearer token followed by a control
character) in their exception text and traceback. So ``configure`` hangs one handler on the
``aiohttp`` logger that never formats a record: it emits a structlog event carrying only the
logger's name, the exception's class and the code location that raised it.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

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
    _route_aiohttp_loggers()


# aiohttp's parent logger: its handler sees every child's records (server, web, access, ...).
AIOHTTP_LOGGER = "aiohttp"


class AiohttpRecords(logging.Handler):
    """Turn aiohttp's log records into structlog events that cannot carry request bytes.

    Neither the message, its arguments nor the exception text is ever read: any of them may
    hold what a client sent. An exception is named by its class (``BadHttpMessage``,
    ``LineTooLong``, ...) and by the file and line that raised it, both kmsd's or aiohttp's own.
    """

    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, Any] = {"logger": record.name}
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            fields["error"] = type(exc).__name__
            frames = traceback.extract_tb(exc.__traceback__)
            if frames:
                fields["raised_at"] = f"{frames[-1].filename}:{frames[-1].lineno}"
        # HttpProcessingError is aiohttp's parser family: a client's malformed request.
        parse_error = isinstance(exc, HttpProcessingError)
        event = "http_parse_error" if parse_error else "aiohttp_log"
        level = logging.WARNING if parse_error else record.levelno
        structlog.get_logger(record.name).log(level, event, **fields)


def _route_aiohttp_loggers() -> None:
    logger = logging.getLogger(AIOHTTP_LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, AiohttpRecords)]:
        logger.removeHandler(handler)
    logger.addHandler(AiohttpRecords())
    # Not to the root logger (or the last-resort handler), which would print the raw text.
    logger.propagate = False
