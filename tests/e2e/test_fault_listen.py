"""A replica whose LISTEN backend hangs, end to end: two ``kmsd serve`` processes on one
PostgreSQL; replica B's LISTEN backend (``kmsd-listen/<replica>``) is frozen with SIGSTOP.

B must notice within ping + timeout and answer the polls it holds with 503 and ``Retry-After``
(clients re-poll elsewhere). Alone, a frozen backend is simply replaced: B reconnects and its
polls are woken again while the old backend is still stopped. When the database also refuses
new connections (the LISTEN path stays down), ``/healthz`` says 503 for as long as that lasts,
and B comes back by itself once the backend runs and connections are taken again."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Identity
from tests.e2e.faults import Postgres, health, holds, request, unique_app, wait_for
from tests.e2e.harness import Answer, Ops, Replica, login

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

APP = unique_app("prod/feed")
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


def setup_path(a: Replica, b: Replica, admin: Identity, moto_endpoint: str) -> tuple[Ops, str]:
    ops = Ops(a, admin, moto_endpoint)
    ops("node", "create", APP, "--parents")
    ops.put(APP, "db", {"password": "v0"})
    return ops, login(b.addr, admin, moto_endpoint)


def check_moved(poll: Poll, frozen_at: float) -> None:
    """A poll held on a replica that went deaf: answered 503 with Retry-After, promptly."""
    wait_for(lambda: poll.answer is not None, "the held poll to be answered", 10)
    assert poll.answer is not None
    assert poll.answer.status == 503, poll.answer
    assert poll.answer.headers["Content-Type"].startswith("application/problem+json")
    assert 1 <= int(poll.answer.headers.get("Retry-After", "0")) <= 60, poll.answer
    noticed = poll.answered_at - frozen_at
    # Detection takes ping + timeout; the rest is slack for a loaded machine.
    assert noticed < PING_S + PING_TIMEOUT_S + 3, f"noticed after {noticed:.1f} s"


def check_woken(ops: Ops, a: Replica, b: Replica, token: str, value: str) -> None:
    """A poll held on B is answered by a change made through A."""
    poll = Poll(b.addr, token, version(b.addr, token))
    wait_for(lambda: b.held_polls() == 1, "a poll to be held on B", 10)
    before = version(a.addr, token)
    ops.put(APP, "db", {"password": value})
    put_done = time.monotonic()
    wait_for(lambda: poll.answer is not None, "the change to wake B's poll", 5)
    assert poll.answer is not None
    assert poll.answer.status == 200, poll.answer
    assert poll.answer.body["path_version"] > before
    assert poll.answered_at - put_done < 3


def test_a_frozen_listen_backend_is_noticed_and_replaced(
    pair: tuple[Replica, Replica], pg: Postgres, admin: Identity, moto_endpoint: str
) -> None:
    a, b = pair
    ops, token = setup_path(a, b, admin, moto_endpoint)
    held = Poll(b.addr, token, version(b.addr, token))
    wait_for(lambda: b.held_polls() == 1, "the poll to be held on B", 10)
    pid = pg.backend("kmsd-listen/feed-b")
    with pg.frozen_backend(pid):
        frozen_at = time.monotonic()
        check_moved(held, frozen_at)
        # B opens a new LISTEN connection by itself and listens again, the old one still frozen.
        wait_for(
            lambda: [p for p in pg.backends("kmsd-listen/feed-b") if p != pid] != [],
            f"a new LISTEN backend for B: {pg.application_names()}",
            10,
        )
        wait_for(lambda: health(b) == 200, "B to be healthy on its new connection", 10)
        assert health(a) == 200
        check_woken(ops, a, b, token, "v1")


def test_while_the_listen_path_stays_down_b_is_unhealthy_then_recovers_by_itself(
    pair: tuple[Replica, Replica], pg: Postgres, admin: Identity, moto_endpoint: str
) -> None:
    a, b = pair
    ops, token = setup_path(a, b, admin, moto_endpoint)
    held = Poll(b.addr, token, version(b.addr, token))
    wait_for(lambda: b.held_polls() == 1, "the poll to be held on B", 10)
    pid = pg.backend("kmsd-listen/feed-b")
    with pg.refusing_connections(), pg.frozen_backend(pid):
        frozen_at = time.monotonic()
        went_down = wait_for(lambda: health(b) == 503, "B's /healthz to turn 503", 10)
        check_moved(held, frozen_at)
        # While B cannot listen, it keeps saying so; A, listening, stays healthy.
        holds(lambda: health(b) == 503, 2 * (PING_S + PING_TIMEOUT_S), "B reported down")
        assert health(a) == 200
    came_back = wait_for(lambda: health(b) == 200, "B to recover by itself", 20)
    check_woken(ops, a, b, token, "v1")
    assert went_down < 10
    assert came_back < 20
