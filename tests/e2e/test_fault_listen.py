"""A replica whose LISTEN backend hangs, end to end: two ``kmsd serve`` processes on one
PostgreSQL; replica B's LISTEN backend (``kmsd-listen/<replica>``) is frozen with SIGSTOP - and
so is every new one B opens, until the test lets go. B must say so (``/healthz`` 503), answer
the polls it holds with 503 and ``Retry-After`` (clients re-poll elsewhere), and come back by
itself once the backend runs again, with changes waking its polls."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Identity
from tests.e2e.faults import FreezeAll, Postgres, health, request, wait_for
from tests.e2e.harness import Answer, Ops, Replica, login

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

APP = "prod/feed"
PING_S, PING_TIMEOUT_S = 0.5, 1.0


@pytest.fixture
def pair(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    fast = {
        **env,
        "KMSD_LISTEN_PING": str(PING_S),
        "KMSD_LISTEN_PING_TIMEOUT": str(PING_TIMEOUT_S),
    }
    a = Replica({**fast, "KMSD_REPLICA_ID": "feed-a"}, tmp_path)
    try:
        b = Replica({**fast, "KMSD_REPLICA_ID": "feed-b"}, tmp_path)
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


@pytest.fixture
def pg(env: dict[str, str]) -> Iterator[Postgres]:
    db = Postgres(env["KMSD_DATABASE_URL"])
    try:
        yield db
    finally:
        db.close()


class Poll:
    """One long poll in a thread; ``answer`` once it is answered."""

    def __init__(self, addr: str, token: str, version: int, hold_s: int = 60) -> None:
        self.answer: Answer | None = None
        self.answered_at = 0.0
        body = {"path": APP, "path_version": version, "instance_id": "i-feed"}

        def run() -> None:
            self.answer = request(
                addr, "POST", f"/v1/watch?timeout={hold_s}", body, token, hold_s + 30
            )
            self.answered_at = time.monotonic()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()


def version(addr: str, token: str) -> int:
    answer = request(addr, "GET", f"/v1/effective/{APP}", token=token)
    assert answer.status == 200, answer
    return int(answer.body["path_version"])


def test_a_frozen_listen_backend_turns_the_replica_unhealthy_and_it_recovers_by_itself(
    pair: tuple[Replica, Replica], pg: Postgres, admin: Identity, moto_endpoint: str
) -> None:
    a, b = pair
    ops = Ops(a, admin, moto_endpoint)
    ops("node", "create", APP, "--parents")
    ops.put(APP, "db", {"password": "v0"})
    token = login(b.addr, admin, moto_endpoint)
    held = Poll(b.addr, token, version(b.addr, token))
    wait_for(lambda: b.held_polls() == 1, "the poll to be held on B", 10)

    with FreezeAll(pg, "kmsd-listen/feed-b") as frozen:
        started = time.monotonic()
        went_down = wait_for(lambda: health(b) == 503, "B's /healthz to turn 503", 10)
        assert went_down <= PING_S + PING_TIMEOUT_S + 2, f"noticed after {went_down:.1f} s"
        assert health(a) == 200  # A's own feed is fine
        wait_for(lambda: held.answer is not None, "the held poll to be answered", 5)
        assert held.answer is not None
        assert held.answer.status == 503, held.answer
        assert held.answer.headers["Content-Type"].startswith("application/problem+json")
        assert 1 <= int(held.answer.headers.get("Retry-After", "0")) <= 60, held.answer
        assert held.answered_at - started < 10
        assert frozen.pids, "nothing was frozen"

    came_back = wait_for(lambda: health(b) == 200, "B to recover by itself", 20)
    # Its polls are woken by changes again, made through the other replica.
    poll = Poll(b.addr, token, version(b.addr, token))
    wait_for(lambda: b.held_polls() == 1, "a new poll to be held on B", 10)
    before = version(a.addr, token)
    put_at = time.monotonic()
    ops.put(APP, "db", {"password": "v1"})
    wait_for(lambda: poll.answer is not None, "the change to wake B's poll", 5)
    assert poll.answer is not None
    assert poll.answer.status == 200, poll.answer
    assert poll.answer.body["path_version"] > before
    assert poll.answered_at - put_at < 3
    assert came_back < 20
