"""``kmsd serve`` waits for PostgreSQL, and every start-up failure is one line on stderr.

The database is reached through a relay the test can cut (``Switch``): the test PostgreSQL
listens on a Unix socket (embedded) or TCP (``KMSD_DATABASE_URL``), kmsd always dials the
relay's loopback TCP port, as it would dial RDS.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pytest

from tests.conftest import free_port
from tests.e2e.harness import BIN, DEADLINE_S, Switch, wait_until

pytestmark = pytest.mark.e2e

PASSWORD = "hunter2-never-logged"


class PgRelay(Switch):
    """A ``Switch`` whose upstream is the test PostgreSQL, on a Unix socket or over TCP."""

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        query = dict(parse_qsl(parts.query))
        host = query.get("host") or parts.hostname or "127.0.0.1"
        port = int(query.get("port") or parts.port or 5432)
        self._dial: Callable[[], socket.socket]
        if host.startswith("/"):
            self._dial = lambda: _unix(f"{host}/.s.PGSQL.{port}")
        else:
            self._dial = lambda: socket.create_connection((host, port), timeout=10)
        self._dsn = parts
        super().__init__(f"tcp://{host if not host.startswith('/') else 'unix'}:{port}")

    def dsn(self) -> str:
        """The DSN kmsd is given: the relay's TCP port, the same database and user."""
        user = self._dsn.username or "postgres"
        password = self._dsn.password or PASSWORD  # trust auth ignores it; logs must too
        query = "&".join(
            f"{k}={v}" for k, v in parse_qsl(self._dsn.query) if k not in ("host", "port")
        )
        netloc = f"{user}:{password}@127.0.0.1:{self.port}"
        return urlunsplit(("postgresql", netloc, self._dsn.path, query, ""))

    def _accept(self, listener: socket.socket) -> None:
        # Switch._accept, dialling with self._dial (the upstream may be a Unix socket).
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = self._dial()
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()


def _unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    sock.settimeout(None)
    return sock


class Serve:
    """``kmsd serve`` (or migrate) as a process, its stderr in a file."""

    def __init__(self, env: dict[str, str], log: Path, *args: str, command: str = "serve") -> None:
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("w") as sink:
            self.proc = subprocess.Popen(
                [str(BIN / "kmsd"), command, *args],
                env={"KMSD_LISTEN": f"127.0.0.1:{self.port}", **env},
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.addr + "/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def events(self, name: str) -> list[dict[str, object]]:
        found = []
        for line in self.lines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict) and doc.get("event") == name:
                    found.append(doc)
        return found

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=DEADLINE_S)


@pytest.fixture
def serve() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    try:
        yield started
    finally:
        for s in started:
            if s.proc.poll() is None:
                s.proc.kill()
            s.proc.wait(timeout=DEADLINE_S)


def assert_one_plain_line(s: Serve, *needles: str) -> str:
    """Everything on stderr is a JSON log line, except exactly one ``kmsd: ...`` line."""
    text = s.log.read_text()
    assert "Traceback" not in text, text
    plain = []
    for line in text.splitlines():
        try:
            json.loads(line)
        except ValueError:
            plain.append(line)
    assert len(plain) == 1, text
    assert plain[0].startswith("kmsd: "), text
    for needle in needles:
        assert needle in plain[0], text
    return plain[0]


def test_serve_waits_for_postgresql_then_starts(
    env: dict[str, str], tmp_path: Path, serve: list[Serve]
) -> None:
    relay = PgRelay(env["KMSD_DATABASE_URL"])
    relay.down()
    try:
        s = Serve(
            {**env, "KMSD_DATABASE_URL": relay.dsn()}, tmp_path / "kmsd.log", "--wait-db", "30"
        )
        serve.append(s)
        wait_until(lambda: len(s.events("database_unreachable")) >= 2, "two failed attempts")
        assert s.proc.poll() is None
        assert not s.healthy()  # not listening until the database is there
        relay.up()
        wait_until(s.healthy, "kmsd to start once PostgreSQL is reachable")
    finally:
        relay.down()
    attempts = s.events("database_unreachable")
    for event in attempts:
        assert event["error"] == "ConnectionRefusedError"
        assert 0 < float(str(event["seconds_left"])) <= 30
        assert "127.0.0.1" in str(event["dsn"])
    assert PASSWORD not in s.log.read_text()
    assert len(s.events("database_reachable")) == 1
    assert s.stop() == 0


def test_serve_gives_up_after_wait_db_with_one_line(
    env: dict[str, str], tmp_path: Path, serve: list[Serve]
) -> None:
    dead = f"postgresql://kmsd:{PASSWORD}@127.0.0.1:{free_port()}/kmsd"
    begun = time.monotonic()
    s = Serve({**env, "KMSD_DATABASE_URL": dead}, tmp_path / "kmsd.log", "--wait-db", "2")
    serve.append(s)
    code = s.proc.wait(timeout=DEADLINE_S)
    took = time.monotonic() - begun
    assert code != 0
    assert took < 10, took
    line = assert_one_plain_line(s, "kmsd: PostgreSQL not reachable after 2 s: ")
    assert PASSWORD not in s.log.read_text()
    assert "kmsd:***@127.0.0.1" in line
    assert s.events("database_unreachable")


def test_migrate_waits_too(env: dict[str, str], tmp_path: Path, serve: list[Serve]) -> None:
    dead = f"postgresql://kmsd@127.0.0.1:{free_port()}/kmsd"
    s = Serve(
        {**env, "KMSD_DATABASE_URL": dead},
        tmp_path / "m.log",
        "--wait-db",
        "0.5",
        command="migrate",
    )
    serve.append(s)
    assert s.proc.wait(timeout=DEADLINE_S) != 0
    assert_one_plain_line(s, "PostgreSQL not reachable after 0.5 s")


def test_missing_settings_are_one_line(
    env: dict[str, str], tmp_path: Path, serve: list[Serve]
) -> None:
    s = Serve({k: v for k, v in env.items() if k != "KMSD_DATABASE_URL"}, tmp_path / "c.log")
    serve.append(s)
    assert s.proc.wait(timeout=DEADLINE_S) == 2
    assert_one_plain_line(s, "KMSD_DATABASE_URL")


def test_a_port_in_use_is_one_line(env: dict[str, str], tmp_path: Path, serve: list[Serve]) -> None:
    s = Serve(env, tmp_path / "p.log")
    serve.append(s)
    wait_until(s.healthy, "the first kmsd")
    second = Serve({**env, "KMSD_LISTEN": f"127.0.0.1:{s.port}"}, tmp_path / "p2.log")
    serve.append(second)
    assert second.proc.wait(timeout=DEADLINE_S) == 1
    assert_one_plain_line(second, f"cannot listen on 127.0.0.1:{s.port}")
    assert s.stop() == 0
