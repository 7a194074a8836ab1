"""Durations as people type them: one pure parser, and the CLI option types built on it."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from kmsd.cli import parsing
from kmsd.domain.durations import format_duration, parse_duration, whole
from kmsd.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "default_unit", "expected"),
    [
        ("30s", "s", timedelta(seconds=30)),
        ("15m", "s", timedelta(minutes=15)),
        ("12h", "s", timedelta(hours=12)),
        ("90d", "s", timedelta(days=90)),
        ("2w", "s", timedelta(weeks=2)),
        ("1h30m", "s", timedelta(minutes=90)),
        ("1d 12h", "s", timedelta(hours=36)),
        ("1.5h", "s", timedelta(minutes=90)),
        ("90D", "s", timedelta(days=90)),
        (" 45 minutes ", "s", timedelta(minutes=45)),
        ("3 days", "s", timedelta(days=3)),
        ("0", "s", timedelta(0)),
        # A plain number keeps the option's old unit.
        ("90", "s", timedelta(seconds=90)),
        ("90", "d", timedelta(days=90)),
        ("2.5", "s", timedelta(seconds=2.5)),
    ],
)
def test_parse_duration(text: str, default_unit: str, expected: timedelta) -> None:
    assert parse_duration(text, default_unit) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "not a duration"),
        ("soon", "not a duration"),
        ("-5m", "not a duration"),
        ("5x", "unknown unit 'x'"),
        ("1e5", "unknown unit 'e'"),
        ("30m1h", "largest unit first"),
        ("1h1h", "largest unit first"),
        ("1h30", "every part needs a unit"),
        ("1 2", "every part needs a unit"),
        ("99999999d", "longer than"),
    ],
)
def test_parse_duration_refuses(text: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        parse_duration(text)


@pytest.mark.parametrize(
    ("span", "unit", "expected"),
    [(timedelta(days=3), "d", 3), (timedelta(weeks=1), "d", 7), (timedelta(minutes=2), "s", 120)],
)
def test_whole(span: timedelta, unit: str, expected: int) -> None:
    assert whole(span, unit, "x") == expected


@pytest.mark.parametrize(
    ("span", "unit"), [(timedelta(hours=12), "d"), (timedelta(seconds=1.5), "s")]
)
def test_whole_refuses_a_fraction(span: timedelta, unit: str) -> None:
    with pytest.raises(InvalidInput, match="not a whole number"):
        whole(span, unit, "x")


@pytest.mark.parametrize(
    ("span", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(days=90), "90d"),
        (timedelta(minutes=90), "1h30m"),
        (timedelta(seconds=2.5), "2.5s"),
    ],
)
def test_format_duration_round_trips(span: timedelta, text: str) -> None:
    assert format_duration(span) == text
    assert parse_duration(text) == span


# -- the CLI option types ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("convert", "text", "expected"),
    [
        (parsing.days, "90", 90),
        (parsing.days, "90d", 90),
        (parsing.days, "26w", 182),
        (parsing.seconds, "90", 90),
        (parsing.seconds, "2m", 120),
        (parsing.seconds_float, "0", 0.0),
        (parsing.seconds_float, "1m30s", 90.0),
        (parsing.seconds_float, "0.5", 0.5),
        (parsing.gate_timeout, "1h30m", "5400s"),
        (parsing.gate_timeout, "15m", "900s"),
        (parsing.time_ago, "2025-01-02T03:04:05+00:00", "2025-01-02T03:04:05+00:00"),
        (parsing.time_ahead, "2025-01-02T03:04:05Z", "2025-01-02T03:04:05+00:00"),
    ],
)
def test_option_types(convert: object, text: str, expected: object) -> None:
    assert callable(convert)
    assert convert(text) == expected


@pytest.mark.parametrize(("convert", "sign"), [(parsing.time_ago, -1), (parsing.time_ahead, +1)])
def test_a_duration_is_a_time_relative_to_now(convert: object, sign: int) -> None:
    assert callable(convert)
    at = datetime.fromisoformat(convert("12h"))
    expected = datetime.now(UTC) + sign * timedelta(hours=12)
    assert abs((at - expected).total_seconds()) < 5


@pytest.mark.parametrize(
    ("convert", "text", "says"),
    [
        (parsing.days, "12h", "not a whole number of days"),
        (parsing.days, "soon", "not a duration"),
        (parsing.seconds, "1.5", "not a whole number of seconds"),
        (parsing.time_ago, "2025-01-02T03:04:05", "no time zone"),
        (parsing.time_ago, "yesterday", "neither an ISO 8601 time"),
    ],
)
def test_option_types_refuse_with_argparse_errors(convert: object, text: str, says: str) -> None:
    assert callable(convert)
    with pytest.raises(argparse.ArgumentTypeError, match=says):
        convert(text)
