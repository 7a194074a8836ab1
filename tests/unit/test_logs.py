"""Log redaction (kmsd.logs)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog
from aiohttp.http_exceptions import BadHttpMessage, InvalidHeader, LineTooLong

from kmsd.logs import (
    AIOHTTP_LOGGER,
    REDACTED_FIELDS,
    AiohttpRecords,
    configure,
    drop_secret_fields,
)

SECRET_KEYS = [
    "value",
    "Value",
    "VALUE",
    "value_b64",
    "secret",
    "Secret",
    "secret_string",
    "SECRET_BINARY",
    "plaintext",
    "password",
    "Password",
    "token",
    "TOKEN",
    "authorization",
    "Authorization",
    "credentials",
    "secret_access_key",
    "session_token",
    "body",
]

KEPT_KEYS = ["event", "path", "name", "version_id", "arn", "values", "token_ttl", "secretive"]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_field_is_dropped(key: str) -> None:
    event: dict[str, Any] = {"event": "hello", key: "hunter2", "path": "ns/app"}
    out = drop_secret_fields(None, "info", event)
    assert out == {"event": "hello", "path": "ns/app"}


@pytest.mark.parametrize("key", KEPT_KEYS)
def test_other_fields_are_kept(key: str) -> None:
    event: dict[str, Any] = {key: "x", "event": "hello"}
    assert drop_secret_fields(None, "info", dict(event)) == event


def test_every_listed_field_is_dropped() -> None:
    event: dict[str, Any] = dict.fromkeys(REDACTED_FIELDS, "hunter2")
    event |= {k.upper(): "hunter2" for k in REDACTED_FIELDS}
    event["event"] = "e"
    assert drop_secret_fields(None, "info", event) == {"event": "e"}


def test_core_names_are_listed() -> None:
    assert {"value", "secret", "token", "password", "authorization"} <= REDACTED_FIELDS


@pytest.fixture
def reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("reset_structlog")
@pytest.mark.parametrize("fmt", ["json", "console"])
def test_configured_logger_never_writes_a_value(
    capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    configure(fmt)
    log = structlog.get_logger("test")
    log.info("secret.put", path="ns/app", name="db", value="hunter2", Token="hunter3")
    log.warning("login", authorization="AWS4-HMAC-SHA256 hunter4", password="hunter5")
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert "secret.put" in err
    assert "ns/app" in err
    for leaked in ("hunter2", "hunter3", "hunter4", "hunter5"):
        assert leaked not in err


@pytest.mark.usefixtures("reset_structlog")
def test_json_lines_keep_other_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure("json")
    structlog.get_logger().info("secret.put", path="ns/app", value="hunter2")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    doc = orjson.loads(lines[0])
    assert doc["event"] == "secret.put"
    assert doc["path"] == "ns/app"
    assert doc["level"] == "info"
    assert "timestamp" in doc
    assert "value" not in doc


@pytest.mark.usefixtures("reset_structlog")
def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", level=logging.WARNING)
    log = structlog.get_logger()
    log.info("quiet")
    log.warning("loud")
    err = capsys.readouterr().err
    assert "quiet" not in err
    assert "loud" in err


def test_nested_and_aws_style_names_are_dropped() -> None:
    event = {
        "event": "x",
        "request": {"SecretString": "hunter2", "SecretId": "db", "inner": [{"Password": "p"}]},
        "SecretBinary": b"raw",
    }
    out = drop_secret_fields(None, "info", event)
    assert out == {"event": "x", "request": {"SecretId": "db", "inner": [{}]}}


# aiohttp's own loggers: their records carry raw request bytes and must not reach the log.

CANARY = "canary-7f3a9c"


@pytest.fixture
def restore_aiohttp_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger(AIOHTTP_LOGGER)
    handlers, propagate = list(logger.handlers), logger.propagate
    yield logger
    logger.handlers[:] = handlers
    logger.propagate = propagate
    structlog.reset_defaults()


def _log_exception(name: str, exc: Exception) -> None:
    try:
        raise exc
    except Exception:
        logging.getLogger(name).exception("Error handling request from %s: %s", CANARY, CANARY)


@pytest.mark.parametrize(
    ("exc", "event"),
    [
        (BadHttpMessage(f"Invalid trailer: {CANARY}"), "http_parse_error"),
        (InvalidHeader(f"Bearer {CANARY}\x01".encode()), "http_parse_error"),
        (LineTooLong(CANARY, "8190"), "http_parse_error"),
        (ValueError(CANARY), "aiohttp_log"),
    ],
    ids=["bad-message", "bad-header", "line-too-long", "other"],
)
@pytest.mark.parametrize("name", ["aiohttp.server", "aiohttp.web", "aiohttp.internal"])
def test_aiohttp_records_become_events_without_request_bytes(
    capsys: pytest.CaptureFixture[str],
    restore_aiohttp_logger: logging.Logger,
    exc: Exception,
    event: str,
    name: str,
) -> None:
    configure("json")
    _log_exception(name, exc)
    err = capsys.readouterr().err
    assert CANARY not in err
    assert "Traceback" not in err
    (line,) = err.splitlines()
    doc = orjson.loads(line)
    assert (doc["event"], doc["logger"], doc["error"]) == (event, name, type(exc).__name__)
    assert doc["raised_at"].endswith(".py:" + doc["raised_at"].rsplit(":", 1)[1])


def test_access_records_carry_no_request_line(
    capsys: pytest.CaptureFixture[str], restore_aiohttp_logger: logging.Logger
) -> None:
    configure("json")
    logging.getLogger("aiohttp.access").warning('"GET /v1/x?token=%s HTTP/1.1" 200', CANARY)
    err = capsys.readouterr().err
    assert CANARY not in err
    assert orjson.loads(err)["event"] == "aiohttp_log"


def test_configure_twice_installs_one_handler(restore_aiohttp_logger: logging.Logger) -> None:
    configure("json")
    configure("console")
    assert sum(isinstance(h, AiohttpRecords) for h in restore_aiohttp_logger.handlers) == 1
    assert restore_aiohttp_logger.propagate is False
