"""Adoption summaries (kmsd.domain.adoption.summarise)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kmsd.domain.adoption import InstanceReport, summarise

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
STALE_AFTER = timedelta(seconds=90)


def report(
    instance_id: str,
    held: dict[str, str],
    *,
    age_s: float = 0.0,
    pids: tuple[str, ...] = (),
    path_version: int = 1,
    replica: str = "r-a",
) -> InstanceReport:
    return InstanceReport(
        instance_id=instance_id,
        principal=f"role/{instance_id}",
        ip="10.0.0.1",
        app_process_ids=pids,
        held=held,
        path_version=path_version,
        replica=replica,
        last_seen=NOW - timedelta(seconds=age_s),
    )


EFFECTIVE: list[dict[str, Any]] = [
    {
        "name": "db-pass",
        "versions": [
            {"version_id": "v2", "stage": "AWSCURRENT"},
            {"version_id": "v1", "stage": "AWSPREVIOUS"},
        ],
    },
    {"name": "api-key", "versions": [{"version_id": "k1", "stage": "AWSCURRENT"}]},
    {"name": "unused", "versions": [{"version_id": "u1", "stage": "AWSCURRENT"}]},
]

REPORTS = [
    report("i-3", {"db-pass": "v2", "api-key": "k1"}, age_s=10, pids=("100", "101")),
    report("i-1", {"db-pass": "v2"}, age_s=90),  # exactly the window: live
    report("i-2", {"db-pass": "v1", "gone": "g7"}, age_s=90.001),  # just past: stale
    report("i-4", {"db-pass": "v0"}, age_s=3600, replica="r-b"),  # old version, stale
]


@pytest.fixture(name="summary")
def _summary() -> dict[str, Any]:
    return summarise("ns/app", REPORTS, EFFECTIVE, now=NOW, stale_after=STALE_AFTER)


def _secret(summary: dict[str, Any], name: str) -> dict[str, Any]:
    [secret] = [s for s in summary["secrets"] if s["name"] == name]
    return secret


def test_summary_header_and_counts(summary: dict[str, Any]) -> None:
    assert summary["path"] == "ns/app"
    assert summary["stale_after_s"] == 90
    assert summary["counts"] == {"instances": 4, "live": 2, "stale": 2, "observers": 0}


@pytest.mark.parametrize(
    ("age_s", "stale"),
    [(0, False), (89.999, False), (90, False), (90.000001, True), (91, True), (-5, False)],
)
def test_staleness_is_strictly_past_the_window(age_s: float, stale: bool) -> None:
    out = summarise("ns/app", [report("i", {}, age_s=age_s)], [], now=NOW, stale_after=STALE_AFTER)
    assert out["instances"][0]["stale"] is stale
    assert out["counts"] == {
        "instances": 1,
        "live": int(not stale),
        "stale": int(stale),
        "observers": 0,
    }


def test_summary_instances_entries(summary: dict[str, Any]) -> None:
    by_id = {i["instance_id"]: i for i in summary["instances"]}
    assert [i["instance_id"] for i in summary["instances"]] == ["i-3", "i-1", "i-2", "i-4"]
    assert by_id["i-3"] == {
        "instance_id": "i-3",
        "role": "serving",
        "principal": "role/i-3",
        "ip": "10.0.0.1",
        "app_process_ids": ["100", "101"],
        "processes": {},
        "path_version": 1,
        "replica": "r-a",
        "last_seen": "2030-01-02T03:03:55+00:00",
        "stale": False,
        "stale_at": "2030-01-02T03:05:25+00:00",
    }
    assert isinstance(by_id["i-1"]["app_process_ids"], list)
    assert by_id["i-1"]["app_process_ids"] == []
    assert by_id["i-4"]["replica"] == "r-b"
    assert {k: v["stale"] for k, v in by_id.items()} == {
        "i-1": False,
        "i-2": True,
        "i-3": False,
        "i-4": True,
    }
    for entry in summary["instances"]:
        assert datetime.fromisoformat(entry["last_seen"]).tzinfo is not None


def test_summary_secret_names_are_sorted_union(summary: dict[str, Any]) -> None:
    assert [s["name"] for s in summary["secrets"]] == ["api-key", "db-pass", "gone", "unused"]


def test_summary_versions_per_secret(summary: dict[str, Any]) -> None:
    assert _secret(summary, "db-pass")["versions"] == [
        {
            "version_id": "v0",
            "stage": None,  # no longer in the effective set
            "instances": ["i-4"],
            "count": 1,
            "live": 0,
            "stale": 1,
        },
        {
            "version_id": "v1",
            "stage": "AWSPREVIOUS",
            "instances": ["i-2"],
            "count": 1,
            "live": 0,
            "stale": 1,
        },
        {
            "version_id": "v2",
            "stage": "AWSCURRENT",
            "instances": ["i-1", "i-3"],  # sorted, not in report order
            "count": 2,
            "live": 2,
            "stale": 0,
        },
    ]
    assert _secret(summary, "api-key")["versions"] == [
        {
            "version_id": "k1",
            "stage": "AWSCURRENT",
            "instances": ["i-3"],
            "count": 1,
            "live": 1,
            "stale": 0,
        }
    ]


def test_summary_keeps_a_held_secret_that_left_the_effective_set(summary: dict[str, Any]) -> None:
    assert _secret(summary, "gone") == {
        "name": "gone",
        "versions": [
            {
                "version_id": "g7",
                "stage": None,
                "instances": ["i-2"],
                "count": 1,
                "live": 0,
                "stale": 1,
            }
        ],
    }


def test_summary_lists_an_effective_secret_nobody_holds(summary: dict[str, Any]) -> None:
    assert _secret(summary, "unused") == {"name": "unused", "versions": []}


def test_stage_is_looked_up_per_secret_not_per_version_id() -> None:
    effective = [
        {"name": "a", "versions": [{"version_id": "same", "stage": "AWSCURRENT"}]},
        {"name": "b", "versions": [{"version_id": "other", "stage": "AWSCURRENT"}]},
    ]
    out = summarise(
        "ns/app",
        [report("i", {"a": "same", "b": "same"})],
        effective,
        now=NOW,
        stale_after=STALE_AFTER,
    )
    stages = {s["name"]: [v["stage"] for v in s["versions"]] for s in out["secrets"]}
    assert stages == {"a": ["AWSCURRENT"], "b": [None]}


def test_summary_of_nothing() -> None:
    out = summarise("ns/app", [], [], now=NOW, stale_after=timedelta(minutes=5))
    assert out == {
        "path": "ns/app",
        "stale_after_s": 300,
        "instances": [],
        "observers": [],
        "counts": {"instances": 0, "live": 0, "stale": 0, "observers": 0},
        "secrets": [],
    }


def test_observers_are_listed_apart_and_hold_nothing() -> None:
    watcher = dataclasses.replace(report("kmsctl-1", {"db-pass": "v2"}), role="observer")
    agent = report("i-1", {"db-pass": "v2"})
    out = summarise("ns/app", [watcher, agent], [], now=NOW, stale_after=STALE_AFTER)
    assert [i["instance_id"] for i in out["instances"]] == ["i-1"]
    assert [(i["instance_id"], i["role"]) for i in out["observers"]] == [("kmsctl-1", "observer")]
    assert out["counts"] == {"instances": 1, "live": 1, "stale": 0, "observers": 1}
    assert out["secrets"][0]["versions"][0]["instances"] == ["i-1"]
