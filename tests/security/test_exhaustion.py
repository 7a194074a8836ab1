"""Class 9, exhaustion: slow headers and bodies, held polls per token, half-open connections
from one address. A kmsd of its own (short timeouts, small caps), attacked over raw sockets;
tests/e2e/test_conn_exhaustion.py adds the descriptor limit and the log flood."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REGION, SERVER_ID, Identity
from tests.security.conftest import LoggedKmsd
from tests.security.signing import signed_body
from tests.security.wire import Req, Result, Tally, exchange, until

KLASS = "9 exhaustion"
HEADER_S = 1.0
LIMITS = {
    "KMSD_HEADER_TIMEOUT": f"{HEADER_S:g}",
    "KMSD_BODY_TIMEOUT": "1",
    "KMSD_WATCH_MAX_PER_TOKEN": "2",
    "KMSD_MAX_PENDING_PER_IP": "8",
}
ATTACKER = "127.0.0.9"


@pytest.fixture(scope="module")
def small(
    fresh_database: Any, moto_endpoint: str, admin: Identity, tmp_path_factory: Any
) -> Iterator[tuple[LoggedKmsd, str]]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KMSD_")},
        "KMSD_DATABASE_URL": fresh_database(f"security_x_{uuid.uuid4().hex[:8]}"),
        "KMSD_SERVER_ID": SERVER_ID,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "KMSD_ADMINS": admin.arn,
        "KMSD_LOG_FORMAT": "json",
        **LIMITS,
    }
    kmsd = LoggedKmsd(env, tmp_path_factory.mktemp("exhaustion") / "kmsd.log")
    try:
        login = exchange(
            kmsd.port,
            Req("POST", "/v1/auth/aws/login", body=signed_body(admin, moto_endpoint)).render({}),
        )
        token = str(login.json()["token"])
        exchange(
            kmsd.port,
            Req(
                "PUT",
                "/v1/nodes/x/app?parents=true",
                headers=[("Authorization", f"Bearer {token}")],
            ).render({}),
        )
        yield kmsd, token
    finally:
        kmsd.stop()


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (EOF or reset)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if ready:
            try:
                return sock.recv(4096) == b""
            except ConnectionResetError:
                return True
    return False


def slow_header(kmsd: LoggedKmsd, token: str) -> tuple[bool, str]:
    with _connect(kmsd.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # and then nothing more
        closed = _closed_within(sock, HEADER_S + 5)
    return closed, f"closed after the header timeout: {closed}"


def slow_body(kmsd: LoggedKmsd, token: str) -> tuple[bool, str]:
    head = (
        "POST /v1/bindings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n"
    )
    with _connect(kmsd.port) as sock:
        sock.sendall(head.encode() + b'{"principal": ')  # a tenth of the body, then a stall
        sock.settimeout(10)
        answer = sock.recv(65536)
    status = answer.split(b" ", 2)[1] if answer else b""
    problem = b"application/problem+json" in answer
    return status == b"408" and problem, f"answer: {answer[:80]!r}"


def polls_per_token(kmsd: LoggedKmsd, token: str) -> tuple[bool, str]:
    """Two polls held (the cap), a third from the same token is 429."""
    headers = [("Authorization", f"Bearer {token}")]
    eff = exchange(kmsd.port, Req("GET", "/v1/effective/x/app", headers=headers).render({}))
    version = eff.json()["path_version"]
    socks = []
    try:
        for n in range(2):
            one = json.dumps({"path": "x/app", "path_version": version, "instance_id": f"h-{n}"})
            sock = _connect(kmsd.port)
            sock.sendall(
                (
                    "POST /v1/watch?timeout=60 HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(one)}\r\n\r\n{one}"
                ).encode()
            )
            socks.append(sock)
        assert until(lambda: _held(kmsd) >= 2, within=10), "the two polls were never held"
        third = json.dumps({"path": "x/app", "path_version": version, "instance_id": "h-3"})
        answer = exchange(
            kmsd.port,
            Req("POST", "/v1/watch?timeout=60", headers=headers, body=json.loads(third)).render({}),
        )
        return answer.status == 429, f"third poll: {answer.status}, held {_held(kmsd)}"
    finally:
        for sock in socks:
            sock.close()


def _held(kmsd: LoggedKmsd) -> float:
    with urllib.request.urlopen(kmsd.addr + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("kmsd_watch_held_polls "):
                return float(line.split()[1])
    return 0.0


def half_open_from_one_address(kmsd: LoggedKmsd, token: str) -> tuple[bool, str]:
    socks = []
    try:
        for _ in range(30):
            sock = _connect(kmsd.port, ATTACKER)
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # never finished
            socks.append(sock)
        started = time.monotonic()
        with urllib.request.urlopen(kmsd.addr + "/healthz", timeout=5) as resp:
            healthy = resp.status == 200
        took = time.monotonic() - started
        closed = sum(_closed_within(s, HEADER_S + 5) for s in socks[8:])
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()
    return healthy and took < 2 and closed == 22, (
        f"/healthz {healthy} in {took:.2f} s; over the cap closed: {closed} of 22"
    )


def compressed_bodies(kmsd: LoggedKmsd, token: str) -> tuple[bool, str]:
    statuses = []
    for encoding in ("gzip", "deflate", "br", "zstd"):
        answer = exchange(
            kmsd.port,
            Req(
                "POST",
                "/v1/bindings",
                headers=[
                    ("Authorization", f"Bearer {token}"),
                    ("Content-Type", "application/json"),
                    ("Content-Encoding", encoding),
                ],
                body=b"\x1f\x8b garbage",
            ).render({}),
        )
        statuses.append((encoding, answer.status, answer.content_type))
    ok = all(s == 415 and c == "application/problem+json" for _, s, c in statuses)
    return ok, f"answers: {statuses}"


CASES: list[tuple[str, Callable[[LoggedKmsd, str], tuple[bool, str]]]] = [
    ("slow-header-closed", slow_header),
    ("slow-body-408", slow_body),
    ("third-poll-of-a-token-429", polls_per_token),
    ("half-open-from-one-address-capped", half_open_from_one_address),
    ("compressed-bodies-415-unread", compressed_bodies),
]


@pytest.mark.parametrize(("case_id", "scenario"), CASES, ids=[c[0] for c in CASES])
def test_held(
    small: tuple[LoggedKmsd, str],
    tally: Tally,
    case_id: str,
    scenario: Callable[[LoggedKmsd, str], tuple[bool, str]],
) -> None:
    kmsd, token = small
    held, detail = scenario(kmsd, token)
    tally.record(KLASS, Result(case_id, refused=held, accepted=not held, server_error=False,
                               detail=detail))  # fmt: skip
    assert held, detail
    assert kmsd.proc.poll() is None
    assert "Traceback" not in Path(kmsd.log).read_text()
