"""The one backoff of kmsctl watch and kmsd serve's database wait: bounds, cap, reset."""

from __future__ import annotations

import random

import pytest

from kmsd.domain.backoff import Backoff


@pytest.mark.parametrize(("initial", "cap"), [(0.2, 10.0), (0.2, 5.0), (1.0, 1.0)])
def test_delays_double_within_jitter_and_stop_at_the_cap(initial: float, cap: float) -> None:
    backoff = Backoff(initial, cap, random.Random(7))
    for attempt in range(40):
        top = min(cap, initial * 2**attempt)
        delay = backoff.next()
        assert top / 2 <= delay <= top
    assert backoff.attempts == 40


def test_reset_starts_again_from_the_initial_delay() -> None:
    backoff = Backoff(0.2, 10.0, random.Random(1))
    for _ in range(10):
        backoff.next()
    backoff.reset()
    assert backoff.attempts == 0
    assert 0.1 <= backoff.next() <= 0.2


def test_jitter_spreads_a_fleet() -> None:
    delays = {round(Backoff(0.2, 10.0, random.Random(seed)).next(), 6) for seed in range(50)}
    assert len(delays) > 40


def test_a_very_long_outage_does_not_overflow() -> None:
    backoff = Backoff(0.2, 10.0)
    for _ in range(5000):
        assert backoff.next() <= 10.0


@pytest.mark.parametrize(("initial", "cap"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)])
def test_nonsense_bounds_are_refused(initial: float, cap: float) -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial, cap)
