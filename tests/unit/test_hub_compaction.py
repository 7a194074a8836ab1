"""Answered polls leave the deadline heap long before their deadline."""

from __future__ import annotations

from kmsd.hub.index import Waiter, WaiterIndex


def test_answered_waiters_are_compacted_out_of_the_heap() -> None:
    index = WaiterIndex()
    waiters = [Waiter(f"ns/app/p{i % 10}", 1, deadline=1000.0 + i) for i in range(4000)]
    for w in waiters:
        index.add(w)
    for w in waiters[:3000]:  # a fleet answered by a change
        index.remove(w)
    assert len(index) == 1000
    assert len(index._deadlines) <= 2048  # not 4000: answered entries were dropped
    # Expiry still works, in order, and only for live waiters.
    assert index.next_deadline() == 4000.0
    due = index.expire(4000.0 + 499)
    assert due == waiters[3000:3500]
    assert len(index) == 500


def test_small_heaps_rely_on_lazy_deletion() -> None:
    index = WaiterIndex()
    waiters = [Waiter("ns/app", 1, deadline=float(i)) for i in range(10)]
    for w in waiters:
        index.add(w)
    for w in waiters[:9]:
        index.remove(w)
    assert index.next_deadline() == 9.0
    assert index.expire(9.0) == [waiters[9]]
    assert index.next_deadline() is None
