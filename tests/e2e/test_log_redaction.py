"""aiohttp's own parser errors never put request bytes in kmsd's log (kmsd.logs).

A real ``kmsd serve`` gets malformed requests over raw sockets: a chunked PUT of a secret whose
trailer is bad, a valid bearer token followed by a control character, broken request lines.
Each is answered 400, and neither the value nor the token appears anywhere in the process's
stderr, which is its whole log.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Identity
from tests.e2e.harness import Replica, login

CANARY = "canary-value-5d1e8b"


@pytest.fixture
def replica(env: dict[str, str], tmp_path: Path) -> Iterator[Replica]:
    kmsd = Replica(env, tmp_path)
    try:
        yield kmsd
    finally:
        kmsd.stop()


def _exchange(replica: Replica, raw: bytes) -> bytes:
    """Send ``raw`` on a fresh connection; return everything until the server closes it."""
    with socket.create_connection(("127.0.0.1", replica.port), timeout=10) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _chunked_put(token: str, trailer: bytes) -> bytes:
    body = json.dumps({"kind": "json", "value": {"password": CANARY}}).encode()
    return (
        b"PUT /v1/secrets/prod/db HTTP/1.1\r\nHost: kmsd\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n"
        + trailer
        + b"\r\n\r\n"
    )


def test_malformed_requests_leave_no_bytes_in_the_log(
    replica: Replica, admin: Identity, moto_endpoint: str
) -> None:
    token = login(replica.addr, admin, moto_endpoint)
    canary = CANARY.encode()
    attacks = {
        "bad trailer": _chunked_put(token, b"Bad Trailer " + canary),
        "trailer control char": _chunked_put(token, b"X-Trailer: " + canary + b"\x01"),
        "token and control char": (
            b"GET /v1/effective/prod HTTP/1.1\r\nHost: kmsd\r\n"
            b"Authorization: Bearer " + token.encode() + b"\x01\r\n\r\n"
        ),
        "NUL in target": b"GET /" + canary + b"\x00 HTTP/1.1\r\nHost: kmsd\r\n\r\n",
        "bad method": b"G\x01T /" + canary + b" HTTP/1.1\r\nHost: kmsd\r\n\r\n",
        "bad version": b"GET /" + canary + b" HTTP/9.x\r\nHost: kmsd\r\n\r\n",
        "line too long": b"GET /" + canary * 1000 + b" HTTP/1.1\r\nHost: kmsd\r\n\r\n",
        "bad header name": b"GET / HTTP/1.1\r\nX " + canary + b": 1\r\n\r\n",
    }
    answers = {case: _exchange(replica, raw) for case, raw in attacks.items()}
    # The replica still answers, and its log is complete once it has stopped.
    assert replica.healthy()
    code, log = replica.stop()
    assert code == 0, log
    for case, answer in answers.items():
        assert _status(answer) == 400, (case, answer[:200])
    assert CANARY not in log
    assert token not in log
    assert token[-12:] not in log  # not even a tail of it
    assert "Traceback" not in log
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    parse_errors = [e for e in events if e["event"] == "http_parse_error"]
    assert parse_errors, log  # aiohttp did log them: through the redacting handler
    assert all(
        set(e) <= {"event", "logger", "error", "raised_at", "level", "timestamp"}
        for e in parse_errors
    ), parse_errors
