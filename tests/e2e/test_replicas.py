"""Two real ``kmsd serve`` processes on one PostgreSQL: a change through one wakes polls on the
other; SIGTERM answers held polls with a retry hint and exits promptly."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.error
from typing import Any

import pytest

from tests.conftest import Identity
from tests.e2e.harness import DEADLINE_S, Replica, call, kmsctl, login, run_kmsctl, wait_until

pytestmark = pytest.mark.e2e


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

    # The poll reported its instance: once B flushes (every second), A's adoption shows it, as an
    # observer (a watch holds no value, so no rotation gate waits for it).
    def reported() -> tuple[list[str], list[str]]:
        doc = json.loads(
            run_kmsctl(a.addr, admin, moto_endpoint, "adoption", "prod/pay/eu", "--output", "json")
        )
        return [i["instance_id"] for i in doc["observers"]], doc["instances"]

    wait_until(lambda: reported() == ([f"kmsctl-{watcher.pid}"], []), "B to flush adoption")


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
