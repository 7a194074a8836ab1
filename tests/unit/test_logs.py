"""Log redaction (kmsd.logs)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog

from kmsd.logs import REDACTED_FIELDS, configure, drop_secret_fields

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
