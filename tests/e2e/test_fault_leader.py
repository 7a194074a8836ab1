"""The scheduler's leadership under a lost lock connection, end to end: two ``kmsd serve``
processes on one PostgreSQL; the leader's lock backend (``kmsd-leader/<replica>``) is
terminated with ``pg_terminate_backend``; exactly one replica leads again within a few ticks
and a webhook event produced afterwards is delivered once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Identity
from tests.e2e.faults import Deliveries, Postgres, holds, unique_app, wait_for
from tests.e2e.harness import Ops, Replica

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

APP = unique_app()  # moto lives per session: an SM name of its own
TICK_S = 0.2
IDS = ("lead-a", "lead-b")


@pytest.fixture
def pair(env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, Replica]]:
    fast = {
        **env,
        "KMSD_SCHEDULER_TICK": str(TICK_S),
        "KMSD_ROTATION_TICK": str(TICK_S),
        "KMSD_WEBHOOK_ALLOWED_CIDRS": "127.0.0.1/32",  # the receiver is on loopback
    }
    started: dict[str, Replica] = {}
    try:
        for rid in IDS:
            started[rid] = Replica({**fast, "KMSD_REPLICA_ID": rid}, tmp_path)
        yield started
    finally:
        for replica in started.values():
            replica.stop()


@pytest.fixture
def pg(env: dict[str, str]) -> Iterator[Postgres]:
    db = Postgres(env["KMSD_DATABASE_URL"])
    try:
        yield db
    finally:
        db.close()


def leading(pair: dict[str, Replica]) -> dict[str, tuple[float, float]]:
    """replica id -> (kmsd_scheduler_leader, kmsd_scheduler_epoch)."""
    return {
        rid: (r.gauge("kmsd_scheduler_leader"), r.gauge("kmsd_scheduler_epoch"))
        for rid, r in pair.items()
    }


def leaders(pair: dict[str, Replica]) -> list[str]:
    return [rid for rid, (lead, _) in leading(pair).items() if lead == 1]


def test_a_terminated_lock_connection_moves_leadership_once_and_webhooks_are_delivered_once(
    pair: dict[str, Replica], pg: Postgres, admin: Identity, moto_endpoint: str
) -> None:
    wait_for(lambda: len(leaders(pair)) == 1, "exactly one scheduler leader", 10)
    holds(lambda: len(leaders(pair)) == 1, 5 * TICK_S, "one leader before the fault")
    (old,) = leaders(pair)
    old_epoch = leading(pair)[old][1]
    assert old_epoch >= 1, leading(pair)
    lock_pid = pg.backend(f"kmsd-leader/{old}")
    assert pg.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $1",
        lock_pid,
    ), "the leader's lock connection holds no advisory lock"
    for rid in IDS:
        assert len(pg.backends(f"kmsd-leader/{rid}")) <= 1, pg.application_names()

    ops = Ops(pair[IDS[0]], admin, moto_endpoint)
    ops("node", "create", APP, "--parents")
    ops.put(APP, "db", {"password": "old"})
    hooks = Deliveries()
    try:
        ops.json("app", "webhook", APP, "--url", hooks.url)

        assert pg.terminate(lock_pid)

        def moved() -> bool:
            states = leading(pair)
            now = [(rid, epoch) for rid, (lead, epoch) in states.items() if lead == 1]
            return len(now) == 1 and now[0][1] > old_epoch

        took = wait_for(moved, "one leader with a new epoch after the lock was lost", 5)
        # Checked over several ticks, not once: a stale leader that kept acting would show.
        holds(lambda: len(leaders(pair)) == 1, 10 * TICK_S, "exactly one leader")
        (new,) = leaders(pair)
        assert lock_pid not in pg.backends(f"kmsd-leader/{old}")
        new_pid = pg.backend(f"kmsd-leader/{new}")
        assert pg.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $1",
            new_pid,
        ), "the new leader's lock connection holds no advisory lock"

        # An event produced after the change of leader: a rotation start.
        rot = ops.json("rotate", "start", APP, "db", "--value", json.dumps({"password": "new"}))
        wait_for(lambda: "start" in hooks.actions(), "the start event's webhook", 10)
        holds(
            lambda: hooks.duplicates() == [] and hooks.actions().count("start") == 1,
            10 * TICK_S,
            f"each delivery once: {hooks.snapshot()}",
        )
    finally:
        hooks.close()
    got = hooks.snapshot()
    assert all(d is not None for d, _ in got), "a delivery without X-Kmsd-Delivery"
    ((_, body),) = [(d, b) for d, b in got if b.get("action") == "start"]
    assert body["rotation_id"] == rot["id"]
    assert took < 5


def test_a_delivery_in_flight_when_the_leader_loses_its_lock_is_not_sent_again(
    pair: dict[str, Replica], pg: Postgres, admin: Identity, moto_endpoint: str
) -> None:
    """The receiver is slow: the start event's delivery is still being answered when the
    leader's lock backend is terminated. Whoever leads next must not deliver that id again."""
    wait_for(lambda: len(leaders(pair)) == 1, "exactly one scheduler leader", 10)
    (old,) = leaders(pair)
    lock_pid = pg.backend(f"kmsd-leader/{old}")
    ops = Ops(pair[IDS[0]], admin, moto_endpoint)
    app = unique_app()
    ops("node", "create", app, "--parents")
    ops.put(app, "db", {"password": "old"})
    hooks = Deliveries(answer_after_s=2.0)
    try:
        ops.json("app", "webhook", app, "--url", hooks.url)
        ops.json("rotate", "start", app, "db", "--value", json.dumps({"password": "new"}))
        wait_for(lambda: "start" in hooks.actions(), "the start delivery to arrive", 10)
        assert pg.terminate(lock_pid)  # while the receiver is still answering it
        wait_for(
            lambda: len(leaders(pair)) == 1 and lock_pid not in pg.backends(f"kmsd-leader/{old}"),
            "one leader again",
            5,
        )
        # Long enough for a redelivery (the answer, then a few ticks) to show up.
        holds(
            lambda: hooks.duplicates() == [] and hooks.actions().count("start") == 1,
            2.0 + 10 * TICK_S,
            f"each delivery once: {hooks.snapshot()}",
        )
    finally:
        hooks.close()
