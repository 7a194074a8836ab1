"""How long the agent waits before asking kmsd again (pure: no I/O, no clock of its own).

kmsd may be buggy or hostile (a compromised replica, a proxy in the way); nothing it says may
make the agent freeze a path or spin. Two rules:

- A delay kmsd asks for (``Retry-After``) is obeyed only when it parses as RFC 9110 says
  (``delay-seconds`` = digits, or an ``HTTP-date``) and never beyond ``MAX_SERVER_DELAY_S``;
  anything else is ignored and the agent's own jittered backoff decides.
- Two requests for one path start at least ``MIN_POLL_INTERVAL_S`` apart, however fast kmsd
  answers: a kmsd that answers every long poll at once cannot make the agent spin.
"""

from __future__ import annotations

from datetime import UTC
from email.utils import parsedate_to_datetime

# Longest delay kmsd may impose. Beyond a minute a path's changes would wait on kmsd's word
# alone; an overloaded kmsd is protected well enough by the agents' jittered backoff.
MAX_SERVER_DELAY_S = 60.0

# Shortest time between the starts of two requests for one path. A held poll lasts up to
# minutes, so a healthy agent never comes near it; a kmsd answering at once is held to 2/s.
MIN_POLL_INTERVAL_S = 0.5


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (at most ``MAX_SERVER_DELAY_S``), or None.

    ``now`` is the wall-clock time (seconds since the epoch), for an HTTP-date. None means
    "no usable advice": absent, a fraction, an exponent, a sign, garbage.
    """
    value = (value or "").strip(" \t")
    if value.isascii() and value.isdigit():
        # len(): far beyond the bound anyway; do not convert a megabyte of digits.
        return MAX_SERVER_DELAY_S if len(value) > 6 else min(float(value), MAX_SERVER_DELAY_S)
    if not value.isascii() or not value[:1].isalpha():  # HTTP-dates start with the day's name
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime and RFC 850 dates are GMT by definition
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, when.timestamp() - now), MAX_SERVER_DELAY_S)


def poll_wait(last_started: float | None, now: float, min_interval: float) -> float:
    """Seconds to wait before the next request for a path (0 if it may start at once)."""
    if last_started is None:
        return 0.0
    return max(0.0, last_started + min_interval - now)
