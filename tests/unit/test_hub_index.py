"""The pure hub index (kmsd.hub.index): ancestors, PrefixSet, Waiter and WaiterIndex."""

from __future__ import annotations

import pytest

from kmsd.hub.index import PrefixSet, Waiter, WaiterIndex, ancestors

# -- ancestors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a/b", ["a", "a/b"]),
        ("a/b/c", ["a", "a/b", "a/b/c"]),
        ("a/b/c/d", ["a", "a/b", "a/b/c", "a/b/c/d"]),
        ("n/a/1/2/3/4", ["n", "n/a", "n/a/1", "n/a/1/2", "n/a/1/2/3", "n/a/1/2/3/4"]),
    ],
)
def test_ancestors_start_at_the_namespace(path: str, expected: list[str]) -> None:
    # A recursive delete of a namespace is a change at the namespace: it must reach watchers.
    assert ancestors(path) == expected


# -- PrefixSet ------------------------------------------------------------------------------


def test_prefix_set_add_is_idempotent() -> None:
    s = PrefixSet()
    s.add("a/b/c")
    s.add("a/b/c")
    assert len(s) == 1
    assert "a/b/c" in s
    assert s.members() == {"a/b/c"}
    assert s.under("a/b") == {"a/b/c"}


def test_prefix_set_discard_is_idempotent_and_tolerates_unknown_paths() -> None:
    s = PrefixSet()
    s.add("a/b/c")
    s.add("a/b/d")
    s.discard("a/b/c")
    s.discard("a/b/c")
    s.discard("x/y")
    assert len(s) == 1
    assert "a/b/c" not in s
    assert s.members() == {"a/b/d"}
    assert s.under("a/b") == {"a/b/d"}
    assert s.under("a/b/c") == set()


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("a/b", {"a/b", "a/b/c", "a/b/c/d", "a/b/e"}),
        ("a/b/c", {"a/b/c", "a/b/c/d"}),
        ("a/b/c/d", {"a/b/c/d"}),
        ("a/b/e", {"a/b/e"}),
        ("a/bc", {"a/bc", "a/bc/x"}),
        ("a/b/c/d/z", set()),
        ("a/x", set()),
        ("z/b", set()),
    ],
)
def test_prefix_set_under_returns_the_prefix_and_its_descendants_only(
    prefix: str, expected: set[str]
) -> None:
    s = PrefixSet()
    for path in ["a/b", "a/b/c", "a/b/c/d", "a/b/e", "a/bc", "a/bc/x", "q/r"]:
        s.add(path)
    assert s.under(prefix) == expected


def test_prefix_set_under_returns_a_copy() -> None:
    s = PrefixSet()
    s.add("a/b/c")
    got = s.under("a/b")
    got.add("intruder")
    s.members().add("intruder")
    assert s.under("a/b") == {"a/b/c"}
    assert s.members() == {"a/b/c"}


def test_prefix_set_empties_its_buckets_after_discards() -> None:
    s = PrefixSet()
    paths = ["a/b", "a/b/c", "a/b/c/d", "x/y/z"]
    for path in paths:
        s.add(path)
    for path in paths:
        s.discard(path)
    assert len(s) == 0
    assert s.members() == set()
    for prefix in ["a/b", "a/b/c", "a/b/c/d", "x/y", "x/y/z"]:
        assert s.under(prefix) == set()
    # No empty bucket is left behind for a prefix nobody is under any more.
    assert s._under == {}


def test_prefix_set_readding_after_discard_works() -> None:
    s = PrefixSet()
    s.add("a/b/c")
    s.discard("a/b/c")
    s.add("a/b/c")
    assert s.under("a/b") == {"a/b/c"}
    assert len(s) == 1


# -- Waiter ---------------------------------------------------------------------------------


def test_waiters_compare_by_identity() -> None:
    w1 = Waiter("a/b", 1, 10.0, "h")
    w2 = Waiter("a/b", 1, 10.0, "h")
    assert w1 != w2
    assert w1 == w1  # noqa: PLR0124
    assert len({w1, w2}) == 2
    assert w1.done is False


# -- WaiterIndex ----------------------------------------------------------------------------


def test_index_add_and_remove() -> None:
    idx = WaiterIndex()
    w1 = Waiter("ns/app", 0, 5.0, object())
    w2 = Waiter("ns/app/r1", 3, 6.0, object())
    idx.add(w1)
    idx.add(w2)
    assert len(idx) == 2
    assert idx.watched_paths() == {"ns/app", "ns/app/r1"}
    assert idx.waiters_of("ns/app") == [w1]

    idx.remove(w1)
    assert w1.done is True
    assert w2.done is False
    assert len(idx) == 1
    assert idx.waiters_of("ns/app") == []
    assert idx.watched_paths() == {"ns/app/r1"}

    idx.remove(w1)  # idempotent
    assert len(idx) == 1
    assert w1.done is True


def test_index_remove_of_an_unknown_waiter_marks_it_done_and_changes_nothing() -> None:
    idx = WaiterIndex()
    kept = Waiter("ns/app", 0, 5.0)
    idx.add(kept)
    stranger = Waiter("ns/app", 0, 5.0)  # equal fields, different poll
    idx.remove(stranger)
    assert stranger.done is True
    assert len(idx) == 1
    assert idx.waiters_of("ns/app") == [kept]
    assert idx.next_deadline() == 5.0


def test_index_keeps_two_equal_waiters_apart() -> None:
    idx = WaiterIndex()
    w1 = Waiter("ns/app", 1, 5.0, "same")
    w2 = Waiter("ns/app", 1, 5.0, "same")
    idx.add(w1)
    idx.add(w2)
    assert len(idx) == 2
    assert set(map(id, idx.waiters_of("ns/app"))) == {id(w1), id(w2)}
    idx.remove(w1)
    assert idx.waiters_of("ns/app") == [w2]
    assert idx.paths_under("ns/app") == {"ns/app"}


WATCHED = ["ns/app", "ns/app/r1", "ns/app/r1/deep", "ns/app/r2", "ns/apple", "ns/other/r1"]


@pytest.mark.parametrize(
    ("change_at", "reached"),
    [
        ("ns/app", {"ns/app", "ns/app/r1", "ns/app/r1/deep", "ns/app/r2"}),
        ("ns/app/r1", {"ns/app/r1", "ns/app/r1/deep"}),
        ("ns/app/r1/deep", {"ns/app/r1/deep"}),
        ("ns/app/r2", {"ns/app/r2"}),
        ("ns/apple", {"ns/apple"}),
        ("ns/other", {"ns/other/r1"}),
        ("ns/app/r3", set()),
        ("ns/none", set()),
    ],
)
def test_index_paths_under_reaches_the_subtree_only(change_at: str, reached: set[str]) -> None:
    idx = WaiterIndex()
    for i, path in enumerate(WATCHED):
        idx.add(Waiter(path, 0, float(i)))
    assert idx.paths_under(change_at) == reached


def test_index_forgets_a_path_when_its_last_waiter_goes() -> None:
    idx = WaiterIndex()
    w1 = Waiter("ns/app/r1", 0, 1.0)
    w2 = Waiter("ns/app/r1", 0, 2.0)
    other = Waiter("ns/app/r2", 0, 3.0)
    for w in (w1, w2, other):
        idx.add(w)
    idx.remove(w1)
    assert idx.paths_under("ns/app") == {"ns/app/r1", "ns/app/r2"}
    idx.remove(w2)
    assert idx.paths_under("ns/app") == {"ns/app/r2"}
    assert idx.paths_under("ns/app/r1") == set()
    assert idx.watched_paths() == {"ns/app/r2"}


@pytest.mark.parametrize(
    ("current", "behind"),
    [
        (0, set()),
        (1, {"v0"}),
        (3, {"v0", "v2"}),  # strict <: the waiter already at 3 is not behind
        (4, {"v0", "v2", "v3"}),
        (100, {"v0", "v2", "v3"}),
    ],
)
def test_index_waiters_behind_uses_strict_less_than(current: int, behind: set[str]) -> None:
    idx = WaiterIndex()
    for v in (0, 2, 3):
        idx.add(Waiter("ns/app", v, 1.0, f"v{v}"))
    idx.add(Waiter("ns/app/other", 0, 1.0, "elsewhere"))
    assert {w.handle for w in idx.waiters_behind("ns/app", current)} == behind


def test_index_waiters_behind_of_an_unwatched_path_is_empty() -> None:
    assert WaiterIndex().waiters_behind("ns/app", 10) == []


def _index_with_deadlines(deadlines: list[float]) -> tuple[WaiterIndex, list[Waiter]]:
    idx = WaiterIndex()
    waiters = [Waiter(f"ns/app/r{i}", 0, d, i) for i, d in enumerate(deadlines)]
    for w in waiters:
        idx.add(w)
    return idx, waiters


@pytest.mark.parametrize(
    ("now", "expected_handles"),
    [
        (0.5, []),
        (1.0, [3]),  # deadline == now expires
        (2.0, [3, 1]),
        (4.99, [3, 1, 0]),
        (5.0, [3, 1, 0, 2]),
        (99.0, [3, 1, 0, 2]),
    ],
)
def test_index_expire_returns_due_waiters_in_deadline_order(
    now: float, expected_handles: list[int]
) -> None:
    idx, waiters = _index_with_deadlines([3.0, 2.0, 5.0, 1.0])
    due = idx.expire(now)
    assert [w.handle for w in due] == expected_handles
    assert all(w.done for w in due)
    remaining = [w for w in waiters if w.handle not in expected_handles]
    assert len(idx) == len(remaining)
    assert not any(w.done for w in remaining)
    for w in due:
        assert idx.waiters_of(w.path) == []
    assert idx.expire(now) == []  # removed: a second call finds nothing


def test_index_expire_keeps_insertion_order_for_equal_deadlines() -> None:
    idx, waiters = _index_with_deadlines([2.0, 2.0, 2.0])
    assert idx.expire(2.0) == waiters


def test_index_expire_and_next_deadline_skip_answered_waiters() -> None:
    idx, waiters = _index_with_deadlines([1.0, 2.0, 3.0])
    assert idx.next_deadline() == 1.0
    idx.remove(waiters[0])  # answered early: still in the heap, skipped lazily
    assert idx.next_deadline() == 2.0
    idx.remove(waiters[1])
    assert idx.expire(2.5) == []
    assert idx.next_deadline() == 3.0
    assert idx.expire(3.0) == [waiters[2]]
    assert idx.next_deadline() is None
    assert len(idx) == 0


def test_index_next_deadline_of_an_empty_index_is_none() -> None:
    idx = WaiterIndex()
    assert idx.next_deadline() is None
    assert idx.expire(1e9) == []


def test_index_drain_returns_everyone_and_leaves_the_index_empty() -> None:
    idx, waiters = _index_with_deadlines([1.0, 2.0])
    extra = Waiter("ns/app/r0", 5, 9.0, "extra")
    idx.add(extra)
    drained = idx.drain()
    assert len(drained) == 3
    assert set(map(id, drained)) == {id(w) for w in [*waiters, extra]}
    assert all(w.done for w in drained)
    assert len(idx) == 0
    assert idx.watched_paths() == set()
    assert idx.paths_under("ns/app") == set()
    assert idx.next_deadline() is None
    assert idx.expire(1e9) == []
    assert idx.drain() == []


def test_index_remove_all() -> None:
    idx, waiters = _index_with_deadlines([1.0, 2.0, 3.0])
    idx.remove_all(waiters[:2])
    assert len(idx) == 1
    assert idx.watched_paths() == {"ns/app/r2"}
    assert idx.next_deadline() == 3.0
