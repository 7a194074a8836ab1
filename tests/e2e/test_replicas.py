"""Two real ``kmsd serve`` processes on one PostgreSQL: a change through one wakes polls on the
other; SIGTERM answers held polls with a retry hint and exits promptly."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.credentials import Credentials

from kmsd.aws.login import sign_login
from tests.conftest import REGION, SERVER_ID, Identity, free_port

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
DEADLINE_S = 30
CACHE_DIR = Path(tempfile.mkdtemp(prefix="kmsctl-cache-", dir="/tmp"))


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Replica:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        # Logs go to a file: a pipe nobody reads would fill up and stall the server.
        self.log = log_dir / f"kmsd-{self.port}.log"
        with self.log.open("w") as sink:
            self.proc = subprocess.Popen(
                [str(BIN / "kmsd"), "serve"],
                env={**env, "KMSD_LISTEN": f"127.0.0.1:{self.port}"},
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        wait_until(self.healthy, f"replica on {self.port}")

    def healthy(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            with urllib.request.urlopen(self.addr + "/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def held_polls(self) -> float:
        with urllib.request.urlopen(self.addr + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        match = re.search(r"^kmsd_watch_held_polls (\S+)$", text, re.M)
        return float(match[1]) if match else 0.0

    def gauge(self, name: str) -> float:
        with urllib.request.urlopen(self.addr + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(match[1]) if match else 0.0

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=DEADLINE_S)
        return code, self.log.read_text()


def call(addr: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    req = urllib.request.Request(
        addr + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
    )
    with urllib.request.urlopen(req, timeout=90) as resp:
        return resp.status, resp.headers, json.loads(resp.read() or b"null")


@pytest.fixture
def env(fresh_database: Any, moto_endpoint: str, admin: Identity) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("KMSD_")},
        "KMSD_DATABASE_URL": fresh_database(f"e2e_{uuid.uuid4().hex[:8]}"),
        "KMSD_SERVER_ID": SERVER_ID,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "KMSD_ADMINS": admin.arn,
        "KMSD_LOG_FORMAT": "json",
    }


@pytest.fixture
def replicas(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    a = Replica(env, tmp_path)
    b = Replica(env, tmp_path)
    try:
        yield a, b
    finally:
        for r in (a, b):
            r.stop()


def login(addr: str, who: Identity, moto_endpoint: str) -> str:
    body = sign_login(
        Credentials(who.access_key, who.secret_key),
        region=REGION,
        sts_endpoint=moto_endpoint,
        server_id=SERVER_ID,
    )
    return str(call(addr, "POST", "/v1/auth/aws/login", body)[2]["token"])


def kmsctl(addr: str, who: Identity, moto_endpoint: str, *args: str, **kw: Any) -> Any:
    env = {
        **os.environ,
        "KMSD_ADDR": addr,
        "KMSD_SERVER_ID": SERVER_ID,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": who.access_key,
        "AWS_SECRET_ACCESS_KEY": who.secret_key,
        "AWS_DEFAULT_REGION": REGION,
        # Never share a token cache with the developer running the tests.
        "XDG_CACHE_HOME": str(CACHE_DIR),
    }
    return subprocess.Popen(
        [str(BIN / "kmsctl"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def run_kmsctl(*args: Any) -> str:
    proc = kmsctl(*args)
    out, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, err
    return str(out)


def test_change_through_one_replica_wakes_a_poll_on_the_other(
    replicas: tuple[Replica, Replica], admin: Identity, moto_endpoint: str
) -> None:
    a, b = replicas
    run_kmsctl(a.addr, admin, moto_endpoint, "node", "create", "prod/pay/eu", "--parents")
    run_kmsctl(a.addr, admin, moto_endpoint, "secret", "put", "prod/pay", "db", "--json", '{"u":1}')
    doc = json.loads(
        run_kmsctl(b.addr, admin, moto_endpoint, "effective", "prod/pay/eu", "--output", "json")
    )
    watcher = kmsctl(
        b.addr,
        admin,
        moto_endpoint,
        "watch",
        "prod/pay/eu",
        "--version",
        str(doc["path_version"]),
        "--once",
        "--timeout",
        "60",
        "--output",
        "json",
    )
    try:
        wait_until(lambda: b.held_polls() == 1, "the poll to be held on replica B")
        run_kmsctl(
            a.addr, admin, moto_endpoint, "secret", "put", "prod/pay", "db", "--json", '{"u":2}'
        )
        out, err = watcher.communicate(timeout=DEADLINE_S)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, err
    assert json.loads(out)["path_version"] > doc["path_version"]

    # The poll reported its instance: once B flushes (every second), A's adoption shows it.
    def reported() -> list[str]:
        doc = json.loads(
            run_kmsctl(a.addr, admin, moto_endpoint, "adoption", "prod/pay/eu", "--output", "json")
        )
        return [i["instance_id"] for i in doc["instances"]]

    wait_until(lambda: reported() == [f"kmsctl-{watcher.pid}"], "B to flush adoption")


def test_sigterm_answers_held_polls_and_exits(
    replicas: tuple[Replica, Replica], admin: Identity, moto_endpoint: str
) -> None:
    a, b = replicas
    token = login(b.addr, admin, moto_endpoint)
    run_kmsctl(a.addr, admin, moto_endpoint, "node", "create", "prod/pay", "--parents")
    status, _, doc = call(b.addr, "GET", "/v1/effective/prod/pay", token=token)
    answers: list[Any] = []

    def hold() -> None:
        body = {"path": "prod/pay", "path_version": doc["path_version"], "instance_id": "i-1"}
        try:
            call(b.addr, "POST", "/v1/watch?timeout=120", body, token)
        except urllib.error.HTTPError as err:
            answers.append((err.code, err.headers.get("Retry-After"), json.loads(err.read())))

    thread = threading.Thread(target=hold)
    thread.start()
    wait_until(lambda: b.held_polls() == 1, "the poll to be held")
    started = time.monotonic()
    code, stderr = b.stop()
    took = time.monotonic() - started
    thread.join(timeout=DEADLINE_S)
    assert code == 0, stderr
    assert took < 10, f"shutdown took {took:.1f} s"
    ((status, retry_after, problem),) = answers
    assert status == 503
    assert 1 <= int(retry_after) <= 5
    assert problem["type"].endswith("/shutting-down")
    assert "Traceback" not in stderr


def test_a_client_that_hangs_up_leaves_no_held_poll(
    replicas: tuple[Replica, Replica], admin: Identity, moto_endpoint: str
) -> None:
    a, _ = replicas
    token = login(a.addr, admin, moto_endpoint)
    run_kmsctl(a.addr, admin, moto_endpoint, "node", "create", "prod/pay", "--parents")
    version = call(a.addr, "GET", "/v1/effective/prod/pay", token=token)[2]["path_version"]
    body = json.dumps({"path": "prod/pay", "path_version": version, "instance_id": "i-1"})
    request = (
        f"POST /v1/watch?timeout=120 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    with socket.create_connection(("127.0.0.1", a.port), timeout=DEADLINE_S) as sock:
        sock.sendall(request)
        wait_until(lambda: a.held_polls() == 1, "the poll to be held")
    wait_until(lambda: a.held_polls() == 0, "the departed client's poll to be dropped")


def test_the_scheduler_moves_to_the_other_replica_when_its_leader_is_killed(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    wait_until(
        lambda: a.gauge("kmsd_scheduler_leader") + b.gauge("kmsd_scheduler_leader") == 1,
        "exactly one scheduler leader",
    )
    leader, follower = (a, b) if a.gauge("kmsd_scheduler_leader") == 1 else (b, a)
    leader.proc.send_signal(signal.SIGKILL)  # no clean shutdown: PostgreSQL ends its session
    leader.proc.wait(timeout=DEADLINE_S)
    wait_until(lambda: follower.gauge("kmsd_scheduler_leader") == 1, "the follower to take over")
