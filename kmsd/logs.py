"""structlog set-up: JSON for ``serve``, readable for ``dev``; values never reach a line.

Two roads lead to kmsd's log. kmsd's own events go through structlog, whose processors drop
every field that could hold a value. aiohttp's stdlib loggers (``aiohttp.server``, ``.web``,
``.access``, ``.internal``, ...) would go around them: its parser errors print the raw request
bytes (a chunked body's JSON value in a bad trailer, a bearer token followed by a control
character) in their exception text and traceback. So ``configure`` hangs one handler on the
``aiohttp`` logger that never formats a record: it emits a structlog event carrying only the
logger's name, the exception's class and the code location that raised it. asyncio's own
reports ("Task exception was never retrieved", "Exception in callback ...") take a third road,
the event loop's exception handler: ``kmsd serve`` installs ``LoopExceptions``, which names the
report by a fixed event and the exception by its class, never by its text.

What a client can trigger at will (a parse error, a failed ``accept()`` at the descriptor limit)
is logged through ``Throttled``: one line per kind every ``THROTTLE_INTERVAL_S``, the next one
carrying how many were dropped, so no client can fill the disk or stall the loop with logging.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sys
import time
import traceback
from collections.abc import Callable, Hashable, MutableMapping
from typing import Any

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

from kmsd.domain.throttle import Throttle

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


# One line per kind of client-triggered event every this many seconds: enough to see an attack
# begin and end, and its size from the counts of lines dropped.
THROTTLE_INTERVAL_S = 10.0


class Throttled:
    """structlog events at most once per (logger, event, error) and interval.

    A line let through after some were dropped carries ``suppressed=N``.
    """

    def __init__(
        self,
        interval_s: float = THROTTLE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._throttle: Throttle[Hashable] = Throttle(interval_s)
        self._clock = clock

    def log(self, name: str, level: int, event: str, /, **fields: Any) -> None:
        """Log ``event`` on logger ``name`` unless its kind was logged within the interval."""
        dropped = self._throttle.admit((name, event, fields.get("error")), self._clock())
        if dropped is None:
            return
        if dropped:
            fields["suppressed"] = dropped
        structlog.get_logger(name).log(level, event, **fields)


def exception_fields(exc: BaseException | None) -> dict[str, Any]:
    """Name ``exc`` by its class, its errno and where it was raised: never by its text."""
    if exc is None:
        return {}
    fields: dict[str, Any] = {"error": type(exc).__name__}
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        fields["errno"] = errno.errorcode[exc.errno]
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        fields["raised_at"] = f"{frames[-1].filename}:{frames[-1].lineno}"
    return fields


class AiohttpRecords(logging.Handler):
    """Turn aiohttp's log records into structlog events that cannot carry request bytes.

    Neither the message, its arguments nor the exception text is ever read: any of them may
    hold what a client sent. An exception is named by its class (``BadHttpMessage``,
    ``LineTooLong``, ...) and by the file and line that raised it, both kmsd's or aiohttp's own.
    A client decides how often these happen, so they are throttled.
    """

    def __init__(self, throttled: Throttled | None = None) -> None:
        super().__init__()
        self.throttled = throttled or Throttled()

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        # HttpProcessingError is aiohttp's parser family: a client's malformed request.
        parse_error = isinstance(exc, HttpProcessingError)
        event = "http_parse_error" if parse_error else "aiohttp_log"
        level = logging.WARNING if parse_error else record.levelno
        fields = {"logger": record.name, **exception_fields(exc)}
        self.throttled.log(record.name, level, event, **fields)


# asyncio's reports, by the fixed start of their message. The rest of a message may hold the
# repr of a callback, its arguments or a task - request bytes among them - so it is never used.
LOOP_EVENTS = (
    ("Task exception was never retrieved", "loop_task_exception_unretrieved"),
    ("Exception in callback", "loop_callback_failed"),
    ("socket.accept() out of system resource", "loop_accept_out_of_resources"),
    ("Fatal error on transport", "loop_transport_failed"),
    ("Fatal read error", "loop_transport_failed"),
    ("Fatal write error", "loop_transport_failed"),
)


class LoopExceptions:
    """An event loop exception handler that logs a fixed event and the exception's class."""

    def __init__(self, throttled: Throttled | None = None) -> None:
        self.throttled = throttled or Throttled()

    def __call__(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = context.get("message")
        text = message if isinstance(message, str) else ""
        event = next((name for start, name in LOOP_EVENTS if text.startswith(start)), None)
        exc = context.get("exception")
        fields = exception_fields(exc if isinstance(exc, BaseException) else None)
        self.throttled.log("asyncio", logging.ERROR, event or "loop_exception", **fields)


def _route_aiohttp_loggers() -> None:
    logger = logging.getLogger(AIOHTTP_LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, AiohttpRecords)]:
        logger.removeHandler(handler)
    logger.addHandler(AiohttpRecords())
    # Not to the root logger (or the last-resort handler), which would print the raw text.
    logger.propagate = False
