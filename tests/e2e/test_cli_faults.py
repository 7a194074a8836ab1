"""kmsctl as a real process against everything that goes wrong: one ``kmsctl: ...`` line on
stderr, a non-zero status, never a traceback; and ``kmsctl watch`` outliving its replica."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import REGION, SERVER_ID, Identity, free_port
from tests.e2e.harness import BIN, CACHE_DIR, DEADLINE_S, Ops, Replica, kmsctl, wait_until

pytestmark = pytest.mark.e2e


@dataclass
class Ran:
    code: int
    out: str
    err: str


def run(addr: str, admin: Identity, moto: str, *args: str, **kw: Any) -> Ran:
    proc = kmsctl(addr, admin, moto, *args, **kw)
    out, err = proc.communicate(timeout=DEADLINE_S)
    return Ran(proc.returncode, out, err)


def assert_one_line(ran: Ran, *needles: str) -> str:
    """Exactly one stderr line, ``kmsctl: ...``, no traceback, a non-zero status."""
    assert ran.code != 0, ran
    assert "Traceback" not in ran.err, ran.err
    lines = ran.err.splitlines()
    assert len(lines) == 1, ran.err
    assert lines[0].startswith("kmsctl: "), ran.err
    for needle in needles:
        assert needle in lines[0], ran.err
    return lines[0]


# -- no server, a wrong address, a bad file ---------------------------------------------------


def test_connection_refused(admin: Identity, moto_endpoint: str) -> None:
    addr = f"http://127.0.0.1:{free_port()}"
    ran = run(addr, admin, moto_endpoint, "effective", "prod/pay")
    assert_one_line(ran, f"cannot reach kmsd at {addr}", "connection refused")


def test_unresolvable_host(admin: Identity, moto_endpoint: str) -> None:
    ran = run("http://kmsd.invalid:8700", admin, moto_endpoint, "audit", "list")
    assert_one_line(ran, "cannot reach kmsd at http://kmsd.invalid:8700")


def test_address_without_scheme(admin: Identity, moto_endpoint: str) -> None:
    ran = run("127.0.0.1:8700", admin, moto_endpoint, "effective", "prod/pay")
    assert_one_line(ran, "KMSD_ADDR must be a URL")


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_missing_or_unreadable_file(
    admin: Identity, moto_endpoint: str, tmp_path: Path, kind: str
) -> None:
    target = tmp_path / "nope.pem" if kind == "missing" else tmp_path
    addr = f"http://127.0.0.1:{free_port()}"  # never reached: the file is read first
    for verb in (
        ("secret", "put", "prod/pay", "tls", "--file", str(target)),
        ("rotate", "start", "prod/pay", "tls", "--file", str(target)),
    ):
        ran = run(addr, admin, moto_endpoint, *verb)
        assert_one_line(ran, f"--file {target}: ")


# -- a server that misbehaves -----------------------------------------------------------------


class _Misbehaving(BaseHTTPRequestHandler):
    """Signs anyone in, then answers every other call the way ``server.mode`` says."""

    server: _FakeServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _reply(
        self, status: int, body: bytes, content_type: str, length: int | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/v1/auth/aws/login":
            doc = {"token": "t", "principal": "arn:x", "expires_at": "2999-01-01T00:00:00+00:00"}
            self._reply(200, json.dumps(doc).encode(), "application/json")
            return
        self.do_GET()

    def do_GET(self) -> None:
        mode = self.server.mode
        if mode == "hang-up":
            return  # close without a byte: RemoteDisconnected
        if mode == "cut-short":
            self._reply(200, b'{"path": "prod/pay", "se', "application/json", length=4096)
        elif mode == "html":
            self._reply(200, b"<html><body>Welcome to nginx!</body></html>", "text/html")
        elif mode == "bad-gateway":
            self._reply(502, b"<html>502 Bad Gateway</html>", "text/html")
        elif mode == "wrong-shape":
            self._reply(200, b'{"unexpected": true}', "application/json")


class _FakeServer(ThreadingHTTPServer):
    mode = "hang-up"


@pytest.fixture
def misbehaving() -> Iterator[_FakeServer]:
    server = _FakeServer(("127.0.0.1", 0), _Misbehaving)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("mode", "needle"),
    [
        ("hang-up", "closed the connection without answering"),
        ("cut-short", "the answer was cut short"),
        ("html", "answered 200 with text/html, not JSON"),
        ("bad-gateway", "HTTP 502 Bad Gateway"),
        ("wrong-shape", "unexpected KeyError"),
    ],
)
def test_a_server_that_misbehaves(
    misbehaving: _FakeServer, admin: Identity, moto_endpoint: str, mode: str, needle: str
) -> None:
    misbehaving.mode = mode
    addr = f"http://127.0.0.1:{misbehaving.server_address[1]}"
    assert_one_line(run(addr, admin, moto_endpoint, "effective", "prod/pay"), needle)


# -- a real kmsd ------------------------------------------------------------------------------


def _shell_env(kmsd: Replica, admin: Identity, moto_endpoint: str) -> dict[str, str]:
    """What an operator's shell holds after ``. .kmsd-dev/env``, with kmsctl on PATH."""
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "KMSD_ADDR": kmsd.addr,
        "KMSD_SERVER_ID": SERVER_ID,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": admin.access_key,
        "AWS_SECRET_ACCESS_KEY": admin.secret_key,
        "AWS_DEFAULT_REGION": REGION,
        "XDG_CACHE_HOME": str(CACHE_DIR),
    }


def _closed_pipe() -> tuple[int, int]:
    """A pipe whose reader is already gone: the first write to it fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return read_end, write_end


@pytest.mark.parametrize(
    "verb",
    [("audit", "list"), ("effective", "prod/pay"), ("effective", "prod/pay", "--output", "json")],
)
def test_a_closed_stdout_is_quiet(
    kmsd: Replica, admin: Identity, moto_endpoint: str, verb: tuple[str, ...]
) -> None:
    ops = Ops(kmsd, admin, moto_endpoint)
    ops("node", "create", "prod/pay", "--parents")
    _, write_end = _closed_pipe()
    try:
        proc = subprocess.run(
            [str(BIN / "kmsctl"), *verb],
            env=_shell_env(kmsd, admin, moto_endpoint),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=DEADLINE_S,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 128 + signal.SIGPIPE


def test_piped_into_head_prints_nothing_on_stderr(
    kmsd: Replica, admin: Identity, moto_endpoint: str
) -> None:
    ops = Ops(kmsd, admin, moto_endpoint)
    ops("node", "create", "prod/pay", "--parents")
    for n in range(3):  # a few lines; the closed-pipe test above makes the failure certain
        ops("secret", "put", "prod/pay", f"s{n}", "--json", '{"k": 1}')
    for verb in ("audit list --limit 1000", "effective prod/pay"):
        shell = subprocess.run(
            ["bash", "-c", f"kmsctl {verb} | head -1; exit ${{PIPESTATUS[0]}}"],
            env=_shell_env(kmsd, admin, moto_endpoint),
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            check=False,
        )
        assert shell.stderr == ""
        assert len(shell.stdout.splitlines()) == 1
        assert shell.returncode in (0, 128 + signal.SIGPIPE)


# -- kmsctl watch -----------------------------------------------------------------------------


class Lines:
    """A process's stdout and stderr, read line by line on threads as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, sink), daemon=True)
            for stream, sink in ((proc.stdout, self.out), (proc.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    def close(self) -> None:
        """Kill the process if it still runs, read what it wrote to the end, close the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE_S)
        for reader in self._readers:
            reader.join(timeout=DEADLINE_S)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    @staticmethod
    def _read(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    def versions(self) -> list[int]:
        return [int(line.split("path_version=")[1].split()[0]) for line in self.out]

    def wait_for(self, check: Any, what: str) -> None:
        def ok() -> bool:
            assert self.proc.poll() is None, (self.proc.returncode, self.out, self.err)
            return bool(check())

        try:
            wait_until(ok, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: stdout={self.out} stderr={self.err}") from None


def _watch(replica: Replica, admin: Identity, moto_endpoint: str, path: str) -> Lines:
    return Lines(kmsctl(replica.addr, admin, moto_endpoint, "watch", path, "--timeout", "60"))


def _stop_watch(lines: Lines) -> None:
    """Ctrl-C, as an operator ends a watch: one line, status 130, no traceback."""
    lines.proc.send_signal(signal.SIGINT)
    lines.proc.wait(timeout=DEADLINE_S)
    wait_until(lambda: "kmsctl: interrupted" in lines.err, "the interrupted line")
    assert lines.proc.returncode == 128 + signal.SIGINT
    assert not any("Traceback" in line for line in lines.err), lines.err


async def _drop_sessions(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM sessions")
    finally:
        await conn.close()


def test_watch_survives_its_replica_being_killed(
    replicas: tuple[Replica, Replica],
    env: dict[str, str],
    tmp_path: Path,
    admin: Identity,
    moto_endpoint: str,
) -> None:
    a, b = replicas
    ops = Ops(a, admin, moto_endpoint)
    ops("node", "create", "prod/pay/eu", "--parents")
    ops.put("prod/pay", "db", {"v": 1})
    start = ops.json("effective", "prod/pay/eu")["path_version"]
    watch = _watch(b, admin, moto_endpoint, "prod/pay/eu")
    b2: Replica | None = None
    try:
        watch.wait_for(lambda: b.held_polls() == 1, "the watch's poll to be held on B")
        b.proc.kill()  # SIGKILL: no 503, no goodbye; the held connection is simply reset
        b.proc.wait(timeout=DEADLINE_S)
        watch.wait_for(lambda: any("lost kmsd" in line for line in watch.err), "the lost line")
        # While B is away: a change (through A), and every token forgotten (B will refuse
        # the watch's token with 401, and the watch must sign in again).
        ops.put("prod/pay", "db", {"v": 2})
        while_away = ops.json("effective", "prod/pay/eu")["path_version"]
        assert while_away > start
        asyncio.run(_drop_sessions(env["KMSD_DATABASE_URL"]))
        b2 = Replica(env, tmp_path, port=b.port)
        watch.wait_for(lambda: while_away in watch.versions(), "the change made while away")
        watch.wait_for(lambda: b2.held_polls() == 1, "the watch to hold a poll on the new B")
        ops.put("prod/pay", "db", {"v": 3})
        after = ops.json("effective", "prod/pay/eu")["path_version"]
        watch.wait_for(lambda: after in watch.versions(), "the change made after the return")
        assert watch.versions() == [while_away, after]
        _stop_watch(watch)
    finally:
        watch.close()
        if b2 is not None:
            b2.stop()
    lost = [line for line in watch.err if "lost kmsd" in line]
    back = [line for line in watch.err if "back on kmsd" in line]
    assert len(lost) == 1, watch.err
    assert len(back) == 1, watch.err
    assert f"path_version={while_away}" in back[0]


def test_watch_honours_retry_after_when_its_replica_stops(
    replicas: tuple[Replica, Replica],
    env: dict[str, str],
    tmp_path: Path,
    admin: Identity,
    moto_endpoint: str,
) -> None:
    a, b = replicas
    ops = Ops(a, admin, moto_endpoint)
    ops("node", "create", "prod/pay", "--parents")
    watch = _watch(b, admin, moto_endpoint, "prod/pay")
    b2: Replica | None = None
    try:
        watch.wait_for(lambda: b.held_polls() == 1, "the watch's poll to be held on B")
        b.stop()  # SIGTERM: held polls are answered 503 with a Retry-After of 1-5 s
        watch.wait_for(lambda: any("lost kmsd" in line for line in watch.err), "the lost line")
        b2 = Replica(env, tmp_path, port=b.port)
        ops.put("prod/pay", "db", {"v": 1})
        version = ops.json("effective", "prod/pay")["path_version"]
        watch.wait_for(lambda: version in watch.versions(), "the change after the restart")
        _stop_watch(watch)
    finally:
        watch.close()
        if b2 is not None:
            b2.stop()
    lost = next(line for line in watch.err if "lost kmsd" in line)
    assert "(503)" in lost
    assert "as it asks" in lost  # it waited the Retry-After, not its own backoff
