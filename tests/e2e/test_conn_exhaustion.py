"""Hostile connections cannot exhaust a replica (kmsd.http.conn, kmsd.http.server).

Real ``kmsd serve`` processes attacked over raw sockets: a request line sent a byte at a time
is dropped after the header timeout, a body slower than the body timeout is answered 408
problem+json, connections from one address that never deliver a request are capped (but not
those of a client that opens many at once and uses them), and at a
low descriptor limit (RLIMIT_NOFILE 256) four hundred half-open connections neither stop
``/healthz`` nor flood the log. A held poll, longer than both timeouts, is answered as usual,
and aiohttp's own refusals are problem+json like kmsd's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import select
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REGION, SERVER_ID, Identity, free_port
from tests.e2e.harness import BIN, DEADLINE_S, Replica, call, login, run_kmsctl, wait_until

pytestmark = pytest.mark.e2e

HEADER_S = 1.0
BODY_S = 1.0
FAST = {"KMSD_HEADER_TIMEOUT": f"{HEADER_S:g}", "KMSD_BODY_TIMEOUT": f"{BODY_S:g}"}
# Low enough to reach quickly, high enough for kmsd itself (it starts with ~15 open).
LOW_NOFILE = 256
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 10)]  # loopback has all of 127/8


class LimitedReplica(Replica):
    """``kmsd serve`` with extra settings and, optionally, a descriptor limit of its own."""

    def __init__(
        self, env: dict[str, str], log_dir: Path, extra: dict[str, str], nofile: int | None = None
    ) -> None:
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"kmsd-{self.port}.log"
        limit = (
            None
            if nofile is None
            else functools.partial(resource.setrlimit, resource.RLIMIT_NOFILE, (nofile, nofile))
        )
        with self.log.open("a") as sink:
            self.proc = subprocess.Popen(
                [str(BIN / "kmsd"), "serve"],
                env={**env, **extra, "KMSD_LISTEN": f"127.0.0.1:{self.port}"},
                stdout=subprocess.DEVNULL,
                stderr=sink,
                preexec_fn=limit,  # noqa: PLW1509 - setrlimit only, between fork and exec
            )
        wait_until(self.healthy, f"replica on {self.port}")

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture(scope="module")
def module_env(fresh_database: Any, moto_endpoint: str, admin: Identity) -> dict[str, str]:
    """One database for this module's replicas: each test starts the one it needs."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("KMSD_")},
        "KMSD_DATABASE_URL": fresh_database("e2e_conn_exhaustion"),
        "KMSD_SERVER_ID": SERVER_ID,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "KMSD_ADMINS": admin.arn,
        "KMSD_LOG_FORMAT": "json",
    }


@pytest.fixture(scope="module")
def fast(module_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """A replica with one-second header and body timeouts."""
    replica = LimitedReplica(module_env, tmp_path_factory.mktemp("fast"), FAST)
    try:
        yield replica
    finally:
        replica.stop()


def _connect(port: int, source: str = "127.0.0.1", first: bytes = b"") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(DEADLINE_S)
    sock.connect(("127.0.0.1", port))
    if first:
        sock.sendall(first)
    return sock


def _ended(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF or reset), without waiting."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(65536, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _head_and_body(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    return int(status_line.split(" ", 2)[1]), headers, body


def _healthz_took(replica: Replica, timeout: float = 2.0) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(replica.addr + "/healthz", timeout=timeout) as resp:
        assert resp.status == 200
        assert json.loads(resp.read())["status"] == "ok"
    return time.monotonic() - started


# -- timeouts ----------------------------------------------------------------------------------


def test_a_slow_request_line_and_headers_are_dropped_after_the_header_timeout(
    fast: Replica,
) -> None:
    with (
        _connect(fast.port, first=b"GET /healthz HTTP/1.1\r\nHost: kmsd\r\nX-Slow: ") as slow,
        _connect(fast.port) as silent,  # sends nothing at all
    ):
        started = time.monotonic()
        # One header byte every 0.2 s: the connection is never idle, it is only slow.
        while not _ended(slow) and time.monotonic() - started < 4 * HEADER_S:
            with contextlib.suppress(OSError):
                slow.sendall(b"a")
            select.select([slow], [], [], 0.2)
        took = time.monotonic() - started
        assert _ended(slow), "a header sent a byte at a time kept its connection"
        assert 0.8 * HEADER_S <= took < 3 * HEADER_S, took
        assert _read_all(slow) == b""  # no request, nothing to answer
        wait_until(lambda: _ended(silent), "the silent connection to be dropped")


def test_an_idle_kept_alive_connection_is_not_held_to_the_header_timeout(fast: Replica) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: kmsd\r\n\r\n"
    with _connect(fast.port, first=request) as sock:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        # Idle for twice the header timeout: nothing arrives, and the connection stays open.
        assert select.select([sock], [], [], 2 * HEADER_S)[0] == []
        sock.sendall(request)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_a_slow_body_is_answered_408_problem_json_and_closed(fast: Replica) -> None:
    head = (
        b"POST /v1/auth/aws/login HTTP/1.1\r\nHost: kmsd\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    with _connect(fast.port, first=head) as sock:
        started = time.monotonic()
        while not select.select([sock], [], [], 0.2)[0]:
            sock.sendall(b" ")  # a byte every 0.2 s: alive, slower than any honest client
            assert time.monotonic() - started < 4 * BODY_S, "no answer to a slow body"
        status, headers, body = _head_and_body(_read_all(sock))  # and then the server closes
        took = time.monotonic() - started
    assert status == 408
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert json.loads(body)["type"].endswith("/request-timeout")
    assert 0.8 * BODY_S <= took < 3 * BODY_S, took


def test_a_poll_held_longer_than_both_timeouts_is_answered_as_usual(
    fast: Replica, admin: Identity, moto_endpoint: str
) -> None:
    run_kmsctl(fast.addr, admin, moto_endpoint, "node", "create", "conn/poll", "--parents")
    token = login(fast.addr, admin, moto_endpoint)
    version = call(fast.addr, "GET", "/v1/effective/conn/poll", token=token)[2]["path_version"]
    body = json.dumps({"path": "conn/poll", "path_version": version, "instance_id": "i-conn"})
    hold = 1.5 * (HEADER_S + BODY_S)  # at least 90 % of it once jittered
    request = (
        f"POST /v1/watch?timeout={hold:g} HTTP/1.1\r\nHost: kmsd\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    with _connect(fast.port, first=request) as sock:
        started = time.monotonic()
        wait_until(lambda: fast.held_polls() == 1, "the poll to be held")
        status, _, _ = _head_and_body(sock.recv(65536))
        took = time.monotonic() - started
    assert status == 304  # the hold ran out: nothing changed
    assert took >= 0.9 * hold > HEADER_S + BODY_S


# -- aiohttp's own answers ---------------------------------------------------------------------

AIOHTTP_REFUSALS = {
    "br body": (
        b"POST /v1/auth/aws/login HTTP/1.1\r\nHost: kmsd\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Encoding: br\r\nContent-Length: 5\r\n\r\n\x8b\x02\x80zz",
        415,
    ),
    "zstd body": (
        b"POST /v1/auth/aws/login HTTP/1.1\r\nHost: kmsd\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Encoding: zstd\r\nContent-Length: 5\r\n\r\n(\xb5/\xfdz",
        415,
    ),
    "not HTTP": (b"GG\r\n\r\n", 400),
    "unknown Expect": (
        b"GET /healthz HTTP/1.1\r\nHost: kmsd\r\nConnection: close\r\nExpect: canary\r\n\r\n",
        417,
    ),
}


@pytest.mark.parametrize(("raw", "status"), AIOHTTP_REFUSALS.values(), ids=AIOHTTP_REFUSALS)
def test_aiohttps_own_refusals_are_problem_json(fast: Replica, raw: bytes, status: int) -> None:
    with _connect(fast.port, first=raw) as sock:
        got, headers, body = _head_and_body(_read_all(sock))
    assert got == status
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == status
    assert "canary" not in problem["detail"]  # never an echo of the request


# -- connection caps ---------------------------------------------------------------------------


def test_connections_from_one_address_that_deliver_no_request_are_capped(
    module_env: dict[str, str], tmp_path: Path, admin: Identity, moto_endpoint: str
) -> None:
    cap = 8
    replica = LimitedReplica(module_env, tmp_path, {"KMSD_MAX_PENDING_PER_IP": str(cap)})
    attacker, half = ATTACKERS[0], b"GET /healthz HTTP/1.1\r\n"
    honest: list[socket.socket] = []
    socks: list[socket.socket] = []
    try:
        # Opened in parallel, as a client with many polls does: each sends its request at once.
        honest += [_connect(replica.port, attacker) for _ in range(3 * cap)]
        for sock in honest:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: kmsd\r\n\r\n")
        assert all(sock.recv(65536).startswith(b"HTTP/1.1 200") for sock in honest)
        socks += [_connect(replica.port, attacker, half) for _ in range(3 * cap)]
        # Those over the cap had a second to deliver a request (PROBATION_S), and did not.
        wait_until(lambda: sum(map(_ended, socks)) == 2 * cap, "the connections over the cap")
        kept = [s for s in socks if not _ended(s)]
        assert len(kept) == cap
        # Other addresses are served, signed in or not.
        assert _healthz_took(replica) < 2
        token = login(replica.addr, admin, moto_endpoint)
        assert call(replica.addr, "GET", "/v1/auth/whoami", token=token)[0] == 200
        # A slot is the attacker's again once one of its connections delivers a request.
        kept[0].sendall(b"Host: kmsd\r\n\r\n")
        assert kept[0].recv(65536).startswith(b"HTTP/1.1 200")
        with (
            _connect(replica.port, attacker, half) as one_more,
            _connect(replica.port, attacker, half) as too_many,
        ):
            wait_until(lambda: _ended(too_many), "a connection over the cap to be closed")
            assert not _ended(one_more)  # within the cap: it keeps the full header timeout
            assert all(not _ended(s) for s in honest)  # kept alive, idle: not counted
    finally:
        for sock in socks + honest:
            sock.close()
        replica.stop()


def _half_open(port: int, count: int) -> list[socket.socket]:
    """``count`` connections spread over the attacker addresses, each with half a request."""
    return [
        _connect(port, ATTACKERS[i % len(ATTACKERS)], b"GET /healthz HTTP/1.1\r\nHost: k")
        for i in range(count)
    ]


def _attack_lines(replica: LimitedReplica, since: int) -> list[str]:
    """What the log says from line ``since`` on, but for the probes' own request lines."""
    return [
        line
        for line in replica.lines()[since:]
        if not (line.startswith("{") and json.loads(line).get("event") == "request")
    ]


# The header timeout is long here: half-open connections must be dealt with by the cap, not
# by the clock.
@pytest.mark.parametrize(
    ("extra", "event"),
    [
        ({"KMSD_HEADER_TIMEOUT": "60"}, "connection_shed"),
        ({"KMSD_HEADER_TIMEOUT": "60", "KMSD_MAX_CONNECTIONS": "1000"}, "accept_failed"),
    ],
    ids=["cap-from-rlimit", "cap-above-rlimit"],
)
def test_at_a_low_descriptor_limit_half_open_connections_stop_neither_healthz_nor_the_log(
    module_env: dict[str, str], tmp_path: Path, extra: dict[str, str], event: str
) -> None:
    """cap-from-rlimit: the cap keeps accept() below the limit; the oldest half-open go.
    cap-above-rlimit: a cap set too high, so accept() fails with EMFILE: the same, throttled."""
    replica = LimitedReplica(module_env, tmp_path, extra, nofile=LOW_NOFILE)
    socks: list[socket.socket] = []
    try:
        since = len(replica.lines())
        # Well over what fits: about 60 by the cap, 240 before EMFILE.
        socks += _half_open(replica.port, 400)
        took = [_healthz_took(replica) for _ in range(5)]
        assert max(took) < 2, took
        wait_until(lambda: sum(map(_ended, socks)) >= 100, "half-open connections to be shed")
        lines = _attack_lines(replica, since)
        assert len(lines) < 20, lines[:40]
        assert any(json.loads(line)["event"] == event for line in lines), lines
        assert not any("Too many open files" in line or "Traceback" in line for line in lines)
    finally:
        for sock in socks:
            sock.close()
        code, log = replica.stop()
    assert code == 0, log[-2000:]
