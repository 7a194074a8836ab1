"""What kmsctl prints for a waiting gate (hints, stale times) and for adoption (observers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kmsd.cli.rotate_verbs import _when, render_status
from kmsd.cli.watch_verbs import render_adoption

NOW = datetime(2025, 1, 2, 12, 0, 0, tzinfo=UTC)


def _straggler(instance: str, stale_at: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "instance_id": instance,
        "path": "prod/pay/eu",
        "role": "owner",
        "name": "db",
        "current": "v-old",
        "ip": "10.0.0.7",
        "last_seen": "2025-01-02T11:59:00+00:00",
        "processes": {},
    }
    if stale_at is not None:
        row["stale_at"] = stale_at
    return row


def _rotation(waiting: list[dict[str, Any]], *, met: bool = False) -> dict[str, Any]:
    return {
        "id": 12,
        "path": "prod/pay",
        "name": "db",
        "phase": "pending",
        "mode": "manual",
        "new_version": "v-new",
        "old_version": "v-old",
        "gate": {
            "gate": 1,
            "target_version": "v-new",
            "met": met,
            "counts": {"held": 1, "live": 1 + len(waiting), "waiting": len(waiting), "stale": 0},
            "held": [],
            "waiting": waiting,
            "stale": [],
        },
        "events": [],
    }


def test_a_waiting_gate_says_when_each_straggler_goes_stale_and_what_to_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=4, seconds=30)).isoformat()
    render_status(_rotation([_straggler("i-7", soon), _straggler("i-8", None)]))
    out = capsys.readouterr().out
    line_7 = next(line for line in out.splitlines() if "waiting for i-7" in line)
    assert " stale at " in line_7
    assert "(in 4m" in line_7
    line_8 = next(line for line in out.splitlines() if "waiting for i-8" in line)
    assert "stale at" not in line_8  # stale_at absent: nothing made up
    assert "kmsctl rotate advance 12 --force" in out
    assert "kmsctl adoption forget prod/pay/eu i-7" in out
    assert "kmsctl adoption forget prod/pay/eu i-8" in out


def test_no_stale_at_anywhere_still_prints_the_hints(capsys: pytest.CaptureFixture[str]) -> None:
    render_status(_rotation([_straggler("i-7", None)]))
    out = capsys.readouterr().out
    assert "stale at" not in out
    assert "goes stale" not in out
    assert "kmsctl rotate advance 12 --force" in out


def test_a_met_gate_has_no_hints(capsys: pytest.CaptureFixture[str]) -> None:
    render_status(_rotation([], met=True))
    assert "--force" not in capsys.readouterr().out


def test_many_stragglers_are_summarised(capsys: pytest.CaptureFixture[str]) -> None:
    render_status(_rotation([_straggler(f"i-{n}", None) for n in range(9)]))
    out = capsys.readouterr().out
    assert out.count("kmsctl adoption forget") == 5
    assert "... and 4 more (kmsctl rotate status 12 --output json)" in out


@pytest.mark.parametrize(
    ("iso", "text"),
    [
        ("2025-01-02T12:04:10+00:00", "at 12:04:10 UTC (in 4m10s)"),
        ("2025-01-02T12:00:09+00:00", "at 12:00:09 UTC (in 9s)"),
        ("2025-01-02T14:30:00+00:00", "at 14:30:00 UTC (in 2h30m)"),
        ("2025-01-02T13:04:10+01:00", "at 12:04:10 UTC (in 4m10s)"),
        ("2025-01-02T11:59:00+00:00", "at 11:59:00 UTC (due now)"),
        ("2025-01-02T12:04:10", "at 12:04:10 UTC (in 4m10s)"),
        ("whenever", "at whenever"),
    ],
)
def test_when(iso: str, text: str) -> None:
    assert _when(iso, NOW) == text


def _adoption(observers: list[dict[str, Any]] | None) -> dict[str, Any]:
    instance = {
        "instance_id": "i-agent",
        "ip": "10.0.0.7",
        "path_version": 4,
        "last_seen": "2025-01-02T11:59:00+00:00",
        "stale": False,
        "app_process_ids": ["42"],
    }
    doc: dict[str, Any] = {
        "path": "prod/pay/eu",
        "stale_after_s": 540,
        "counts": {"instances": 1, "live": 1, "stale": 0},
        "secrets": [
            {
                "name": "db",
                "versions": [
                    {
                        "version_id": "v1",
                        "stage": "current",
                        "instances": ["i-agent"],
                        "live": 1,
                        "stale": 0,
                    }
                ],
            }
        ],
        "instances": [instance],
    }
    if observers is not None:
        doc["observers"] = observers
        doc["counts"]["observers"] = len(observers)
    return doc


def test_adoption_shows_observers_apart(capsys: pytest.CaptureFixture[str]) -> None:
    watcher = {
        **_adoption(None)["instances"][0],
        "instance_id": "kmsctl-99",
        "app_process_ids": [],
    }
    render_adoption(_adoption([watcher]))
    out = capsys.readouterr().out
    head, _, observers = out.partition("observers (")
    assert "1 observer(s)" in head
    assert "i-agent" in head
    assert "kmsctl-99" not in head
    assert "kmsctl-99" in observers


@pytest.mark.parametrize("observers", [None, []])
def test_adoption_without_observers_reads_as_before(
    capsys: pytest.CaptureFixture[str], observers: list[dict[str, Any]] | None
) -> None:
    render_adoption(_adoption(observers))
    out = capsys.readouterr().out
    assert "observer" not in out
    assert out.splitlines()[0] == (
        "prod/pay/eu: 1 instance(s), 1 live, 0 stale (stale = not seen for 540 s)"
    )
