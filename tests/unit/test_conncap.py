"""Connection admission (kmsd.domain.conncap): the cap, the phase table, shedding, per-IP."""

from __future__ import annotations

import itertools

import pytest

from kmsd.domain.conncap import (
    MIN_CONNECTIONS,
    TRANSITIONS,
    Event,
    IllegalTransition,
    Ledger,
    Phase,
    Step,
    body_allowance,
    connection_cap,
    fd_reserve,
)

# How to bring a fresh connection to each phase.
PATHS: dict[Phase, tuple[Event, ...]] = {
    Phase.NEW: (),
    Phase.READING: (Event.DISPATCH,),
    Phase.WORKING: (Event.DISPATCH, Event.BODY_DONE),
    Phase.IDLE: (Event.DISPATCH, Event.BODY_DONE, Event.ANSWERED),
    Phase.CLOSING: (Event.SHED,),
}


def _at(phase: Phase, ledger: Ledger[str] | None = None, key: str = "c") -> Ledger[str]:
    ledger = ledger or Ledger(cap=10, max_pending_per_ip=10)
    assert ledger.admit(key, "10.0.0.1")
    for event in PATHS[phase]:
        ledger.apply(key, event)
    assert ledger.phase(key) is phase
    return ledger


# -- the cap -----------------------------------------------------------------------------------


def test_the_reserve_counts_every_descriptor_kmsd_needs_for_itself() -> None:
    # 64 for the process, the pool and LISTEN, SM and KMS pools, the STS session.
    assert fd_reserve(db_pool_max=10) == 64 + 10 + 1 + 20 + 100
    assert fd_reserve(db_pool_max=50) - fd_reserve(db_pool_max=10) == 40


@pytest.mark.parametrize(
    ("fd_limit", "override", "connections", "within"),
    [
        (20_000, None, 20_000 - 195, True),
        (1024, None, 1024 - 195, True),
        (256, None, 61, True),
        (195 + MIN_CONNECTIONS, None, MIN_CONNECTIONS, True),
        (128, None, MIN_CONNECTIONS, False),  # the limit leaves nothing: a floor, and a warning
        (20_000, 500, 500, True),
        (256, 1000, 1000, False),  # set above what the limit leaves
    ],
)
def test_connection_cap(
    fd_limit: int, override: int | None, connections: int, within: bool
) -> None:
    cap = connection_cap(fd_limit, db_pool_max=10, override=override)
    assert cap.connections == connections
    assert cap.within_fd_limit is within
    assert cap.overridden is (override is not None)
    assert (cap.fd_limit, cap.reserve) == (fd_limit, 195)


@pytest.mark.parametrize(
    ("received", "allowed"),
    [
        (0, 30.0),  # a trickle earns nothing: cut at the timeout
        (1000, 30.0 + 1000 / 65536),
        (12 * 1024 * 1024, 30.0 + 192.0),  # the largest watch report, at 64 KiB/s
    ],
)
def test_a_body_earns_time_by_what_it_sends(received: int, allowed: float) -> None:
    assert body_allowance(30.0, received) == pytest.approx(allowed)


# -- the phase table ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "event"), list(itertools.product(Phase, Event)), ids=lambda v: v.value
)
def test_every_phase_and_event(phase: Phase, event: Event) -> None:
    ledger = _at(phase)
    after = TRANSITIONS.get((phase, event))
    if after is None:
        with pytest.raises(IllegalTransition):
            ledger.apply("c", event)
        assert ledger.phase("c") is phase  # a refused event changes nothing
    else:
        assert ledger.apply("c", event) is after


def test_closing_is_final_and_every_other_phase_has_a_way_on() -> None:
    assert {before for before, _ in TRANSITIONS} == set(Phase) - {Phase.CLOSING}
    assert {after for (_, event), after in TRANSITIONS.items() if event is Event.SHED} == {
        Phase.CLOSING
    }


def test_events_on_an_unknown_connection_are_refused_and_closes_ignored() -> None:
    ledger: Ledger[str] = Ledger(cap=2, max_pending_per_ip=2)
    with pytest.raises(IllegalTransition):
        ledger.apply("ghost", Event.DISPATCH)
    ledger.closed("ghost")
    assert ledger.open == 0


def test_a_connection_cannot_be_admitted_twice() -> None:
    ledger = _at(Phase.NEW)
    with pytest.raises(IllegalTransition):
        ledger.admit("c", "10.0.0.1")


@pytest.mark.parametrize(("cap", "per_ip"), [(0, 1), (1, 0)])
def test_a_ledger_needs_room(cap: int, per_ip: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Ledger[str](cap, per_ip)


# -- the accept loop's next step ---------------------------------------------------------------


def test_below_the_cap_there_is_room() -> None:
    ledger: Ledger[str] = Ledger(cap=2, max_pending_per_ip=5)
    assert ledger.next_step() == (Step.ACCEPT, None)
    ledger.admit("a", "10.0.0.1")
    assert ledger.next_step() == (Step.ACCEPT, None)


def test_at_the_cap_the_oldest_unproven_connection_is_shed_first() -> None:
    ledger: Ledger[str] = Ledger(cap=3, max_pending_per_ip=5)
    for key in ("proven", "old", "young"):
        ledger.admit(key, "10.0.0.1")
    for event in (Event.DISPATCH, Event.BODY_DONE, Event.ANSWERED):
        ledger.apply("proven", event)  # idle between requests, and older than "old"
    assert ledger.next_step() == (Step.SHED, "old")
    assert ledger.phase("old") is Phase.CLOSING
    # Its descriptor is not free until it is closed: wait, do not shed another.
    assert ledger.next_step() == (Step.PAUSE, None)
    assert (ledger.open, ledger.closing) == (3, 1)
    ledger.closed("old")
    assert ledger.closing == 0
    assert ledger.next_step() == (Step.ACCEPT, None)


def test_kept_alive_connections_are_shed_once_no_unproven_one_is_left() -> None:
    ledger: Ledger[str] = Ledger(cap=2, max_pending_per_ip=5)
    for key in ("first", "second"):
        ledger.admit(key, "10.0.0.1")
        for event in (Event.DISPATCH, Event.BODY_DONE, Event.ANSWERED):
            ledger.apply(key, event)
    ledger.apply("first", Event.DISPATCH)  # its next request: it starts waiting again, last
    assert ledger.next_step() == (Step.SHED, "second")


def test_working_connections_are_never_shed() -> None:
    ledger: Ledger[str] = Ledger(cap=2, max_pending_per_ip=5)
    for key in ("poll-a", "poll-b"):
        ledger.admit(key, "10.0.0.1")
        ledger.apply(key, Event.DISPATCH)
        ledger.apply(key, Event.BODY_DONE)
    assert ledger.waiting == 0
    assert ledger.next_step() == (Step.PAUSE, None)
    ledger.apply("poll-a", Event.ANSWERED)  # answered: waiting on its client again
    assert ledger.next_step() == (Step.SHED, "poll-a")


def test_a_connection_reading_its_body_may_be_shed() -> None:
    ledger: Ledger[str] = Ledger(cap=1, max_pending_per_ip=5)
    ledger.admit("slow-body", "10.0.0.1")
    ledger.apply("slow-body", Event.DISPATCH)
    assert ledger.shed_one() == "slow-body"
    assert ledger.shed_one() is None  # nothing else waits


# -- per source address ------------------------------------------------------------------------


def test_unproven_connections_over_an_addresss_limit_are_on_probation() -> None:
    ledger: Ledger[str] = Ledger(cap=100, max_pending_per_ip=2)
    assert ledger.admit("a1", "10.0.0.1")
    assert ledger.admit("a2", "10.0.0.1")
    assert not ledger.admit("a3", "10.0.0.1")  # tracked all the same: the caller times it
    assert ledger.open == 3
    assert ledger.pending("10.0.0.1") == 3
    assert ledger.admit("b1", "10.0.0.2")  # another address has its own count
    assert not ledger.proven("a3")
    for event in (Event.DISPATCH, Event.BODY_DONE):
        ledger.apply("a3", event)
    assert ledger.proven("a3")  # it delivered a request in time: it stays
    assert ledger.pending("10.0.0.1") == 2
    ledger.closed("a3")
    assert not ledger.proven("a3")


def test_a_complete_request_or_a_close_frees_the_addresss_slot() -> None:
    ledger: Ledger[str] = Ledger(cap=100, max_pending_per_ip=1)
    ledger.admit("a1", "10.0.0.1")
    ledger.apply("a1", Event.DISPATCH)
    assert ledger.pending("10.0.0.1") == 1  # headers in, body not yet: still unproven
    ledger.apply("a1", Event.BODY_DONE)
    assert ledger.pending("10.0.0.1") == 0
    assert ledger.admit("a2", "10.0.0.1")  # within the limit again
    ledger.closed("a2")
    ledger.closed("a1")
    assert ledger.pending("10.0.0.1") == 0
    assert ledger._pending_by_ip == {}  # no address is kept once its connections are gone


def test_a_body_finished_after_the_answer_still_proves_the_connection() -> None:
    ledger: Ledger[str] = Ledger(cap=100, max_pending_per_ip=1)
    ledger.admit("a", "10.0.0.1")
    ledger.apply("a", Event.DISPATCH)
    ledger.apply("a", Event.ANSWERED)  # e.g. 401 before the body was read
    assert ledger.pending("10.0.0.1") == 1
    ledger.apply("a", Event.BODY_DONE)  # aiohttp read the rest while lingering
    assert ledger.pending("10.0.0.1") == 0
    assert ledger.phase("a") is Phase.IDLE


def test_exempt_addresses_are_never_on_probation() -> None:
    ledger: Ledger[str] = Ledger(cap=100, max_pending_per_ip=1)
    assert all(ledger.admit(f"lb{i}", "10.0.0.9", exempt=True) for i in range(5))
    assert ledger.pending("10.0.0.9") == 5  # counted all the same


def test_a_shed_unproven_connection_frees_its_addresss_slot_on_close() -> None:
    ledger: Ledger[str] = Ledger(cap=1, max_pending_per_ip=1)
    ledger.admit("a", "10.0.0.1")
    assert ledger.next_step() == (Step.SHED, "a")
    assert not ledger.admit("b", "10.0.0.1")  # "a" still counts while it closes
    ledger.closed("b")
    ledger.closed("a")
    assert ledger.admit("c", "10.0.0.1")
