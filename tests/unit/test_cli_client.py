"""kmsctl's client, pure parts: Retry-After, network failure phrases, KMSD_ADDR checks."""

from __future__ import annotations

import http.client
import socket
from datetime import UTC, datetime

import pytest

from kmsd.cli.client import (
    Client,
    CliError,
    HttpError,
    Unreachable,
    _why,
    parse_retry_after,
    read_input,
    transient,
)

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        (" 120 ", 120.0),
        ("Thu, 02 Jan 2025 03:04:15 GMT", 10.0),
        ("Thu, 02 Jan 2025 03:00:00 GMT", 0.0),  # already past: at once
        ("soon", None),
        ("-1", None),
    ],
)
def test_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, NOW) == seconds


@pytest.mark.parametrize(
    ("reason", "phrase"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (ConnectionResetError(104, "Connection reset by peer"), "connection reset"),
        (
            http.client.RemoteDisconnected("Remote end closed connection without response"),
            "the server closed the connection without answering",
        ),
        (http.client.IncompleteRead(b"{", 10), "the answer was cut short"),
        (TimeoutError("timed out"), "no answer within 30 s"),
        (
            socket.gaierror(-2, "Name or service not known"),
            "cannot resolve the host name (Name or service not known)",
        ),
        (OSError(113, "No route to host"), "No route to host"),
        ("certificate verify failed", "certificate verify failed"),
    ],
)
def test_network_failures_read_as_phrases(reason: object, phrase: str) -> None:
    assert _why(reason, 30) == phrase


@pytest.mark.parametrize("addr", ["127.0.0.1:8700", "ftp://kmsd", "http://", "kmsd"])
def test_kmsd_addr_must_be_an_http_url(monkeypatch: pytest.MonkeyPatch, addr: str) -> None:
    monkeypatch.setenv("KMSD_ADDR", addr)
    monkeypatch.setenv("KMSD_SERVER_ID", "kmsd-test")
    with pytest.raises(CliError, match="KMSD_ADDR must be a URL"):
        Client.from_env()


def test_an_unreadable_file_is_named(tmp_path: object) -> None:
    with pytest.raises(CliError, match=r"^--file /nonexistent/x: No such file or directory$"):
        read_input("/nonexistent/x", "--file")


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (Unreachable("cannot reach kmsd at http://k", "connection refused"), True),
        (HttpError("Replica shutting down (503): ...", 503, retry_after=3), True),
        (HttpError("HTTP 502 Bad Gateway", 502, retry_after=None), True),
        (HttpError("Too many requests (429)", 429, retry_after=1), True),
        (HttpError("Not found (404): ...", 404, retry_after=None), False),
        (HttpError("Authentication required (401): ...", 401, retry_after=None), False),
        (CliError("--file x: No such file or directory"), False),
    ],
)
def test_what_a_retry_may_cure(exc: CliError, retry: bool) -> None:
    assert transient(exc) is retry
