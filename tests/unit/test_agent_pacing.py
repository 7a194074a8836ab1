"""kmsagent's pacing: which Retry-After values are obeyed, and the minimum poll interval."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kmsagent.pacing import MAX_SERVER_DELAY_S, MIN_POLL_INTERVAL_S, poll_wait, retry_after
from kmsagent.sync import Backoff

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC).timestamp()

# (Retry-After as sent, seconds the agent waits at most for it, or None: "use your backoff")
RETRY_AFTER = [
    (None, None),
    ("", None),
    ("0", 0.0),
    ("5", 5.0),
    (" 5\t", 5.0),  # optional white space around the field value
    ("60", 60.0),
    ("61", MAX_SERVER_DELAY_S),
    ("999999999", MAX_SERVER_DELAY_S),
    ("9" * 100_000, MAX_SERVER_DELAY_S),  # valid digits, absurd: bounded, not converted
    ("1e9", None),  # the attack: float() read it as 31 years
    ("1.5", None),  # delay-seconds is 1*DIGIT
    ("-1", None),
    ("+5", None),
    ("inf", None),
    ("nan", None),
    ("Infinity", None),
    ("0x10", None),
    ("٣", None),  # an Arabic-Indic three: str.isdigit says yes, RFC 9110 says DIGIT is ASCII
    ("5 seconds", None),
    ("Tue, 01 Dec 2026 12:00:30 GMT", 30.0),  # IMF-fixdate
    ("Tuesday, 01-Dec-26 12:00:10 GMT", 10.0),  # obsolete RFC 850
    ("Tue Dec  1 12:00:20 2026", 20.0),  # obsolete asctime
    ("Tue, 01 Dec 2026 11:00:00 GMT", 0.0),  # in the past: at once
    ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_SERVER_DELAY_S),  # far future: bounded
    ("Tue, 99 Dec 2026 12:00:30 GMT", None),
    ("Tuesday", None),
    ("GMT", None),
]


@pytest.mark.parametrize(("value", "expected"), RETRY_AFTER)
def test_retry_after_is_parsed_per_rfc_9110_and_bounded(
    value: str | None, expected: float | None
) -> None:
    assert retry_after(value, NOW) == expected


def test_the_backoff_bounds_any_hint_it_is_given() -> None:
    assert Backoff().next(1e9) == MAX_SERVER_DELAY_S
    assert Backoff().next(float("inf")) == MAX_SERVER_DELAY_S
    assert Backoff().next(None) <= 0.25


# (when the last request for the path started, now, seconds to wait first)
POLL_WAIT = [
    (None, 100.0, 0.0),  # the first request: at once
    (100.0, 100.0, MIN_POLL_INTERVAL_S),  # kmsd answered instantly: wait the whole interval
    (100.0, 100.2, MIN_POLL_INTERVAL_S - 0.2),
    (100.0, 100.0 + MIN_POLL_INTERVAL_S, 0.0),
    (100.0, 220.0, 0.0),  # a poll held for two minutes: no wait at all
    (100.0, 99.0, MIN_POLL_INTERVAL_S + 1.0),  # a clock step back never shortens the wait
]


@pytest.mark.parametrize(("last", "now", "wait"), POLL_WAIT)
def test_requests_for_a_path_start_at_least_the_interval_apart(
    last: float | None, now: float, wait: float
) -> None:
    assert poll_wait(last, now, MIN_POLL_INTERVAL_S) == pytest.approx(wait)
