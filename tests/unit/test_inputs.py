"""Times given by callers: one table of refusals, and what is accepted comes back in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kmsd.domain.inputs import check_depth, parse_expiry, parse_id, parse_int, parse_time
from kmsd.errors import InvalidInput

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("9999-12-31T23:59:59-14:00", "outside the range"),  # year 10000 in UTC
        ("9999-12-31T23:59:59+00:00", "outside the range"),
        ("2128-01-01T00:00:00Z", "within 100 years"),
        ("2026-11-30T00:00:00Z", "in the future"),
        ("2026-12-01T00:00:00+00:00", "in the future"),
        ("2027-01-01T00:00:00", "with a zone"),
        ("2027-13-01T00:00:00Z", "ISO 8601"),
        ("tomorrow", "ISO 8601"),
        ("", "ISO 8601"),
        (20270101, "ISO 8601"),
        (None, "ISO 8601"),
        (["2027-01-01T00:00:00Z"], "ISO 8601"),
    ],
)
def test_refused(raw: object, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        parse_expiry(raw, now=NOW)


def test_accepted_in_utc() -> None:
    got = parse_expiry("2027-01-01T09:00:00+09:00", now=NOW)
    assert got == datetime(2027, 1, 1, tzinfo=UTC)
    assert got.tzinfo is UTC


@pytest.mark.parametrize(
    "raw",
    ["\u0663", "\uff13", "1\u0663", "-1", "+1", " 1", "1 ", "1.0", "1e3", "", "0x10", True, None],
)
def test_integers_are_ascii_digits_only(raw: object) -> None:
    with pytest.raises(InvalidInput, match="limit must be an integer"):
        parse_int(raw, "limit", low=0, high=10)


def test_integers_in_range() -> None:
    assert parse_int("7", "limit", low=1, high=10) == 7
    assert parse_int(7, "limit", low=1, high=10) == 7
    with pytest.raises(InvalidInput):
        parse_int("11", "limit", low=1, high=10)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", 1),
        ("9223372036854775807", None),
        ("922337203685477580", 922337203685477580),
        ("0", None),
        ("\u0663", None),
        ("99999999999999999999", None),
        ("-1", None),
        ("", None),
    ],
)
def test_ids(raw: str, expected: int | None) -> None:
    assert parse_id(raw) == expected


@pytest.mark.parametrize(
    "raw", ["0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00"]
)
def test_filter_times_at_the_edges_of_the_range_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput, match="range"):
        parse_time(raw, "since")


def test_a_filter_time_comes_back_in_utc() -> None:
    assert parse_time("2026-12-01T09:00:00+09:00", "since") == datetime(2026, 12, 1, tzinfo=UTC)


def test_json_deeper_than_the_limit_is_refused_without_recursion() -> None:
    deep: object = "leaf"
    for _ in range(100_000):  # far past any recursion limit
        deep = [deep]
    with pytest.raises(InvalidInput, match="deeper than 32"):
        check_depth({"value": deep})
    shallow: object = "leaf"
    for _ in range(31):
        shallow = {"k": shallow}
    check_depth(shallow)
