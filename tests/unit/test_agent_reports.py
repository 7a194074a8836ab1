"""What kmsagent's polls report, and when the digest replaces the reports (kmsagent.reports)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from kmsagent.reports import MAX_REPORTED_PROCESSES, reported_processes, watch_body
from kmsd.domain.watch import WATCH_MAX_BODY, parse_watch, reports_digest

FULL: dict[str, Any] = {
    "path": "prod/shop",
    "path_version": 7,
    "instance_id": "i-1",
    "held": {"db": "v2"},
    "versions": {"db": ["v2", "v1"]},
    "processes": {"4242": {"db": "v2"}},
}


def test_reports_go_in_full_until_kmsd_has_taken_them() -> None:
    body, digest = watch_body(FULL, None)
    assert body == FULL
    assert digest == reports_digest(FULL)
    assert watch_body(FULL, "0" * 64) == (FULL, digest)  # kmsd took other reports


def test_taken_reports_are_named_by_their_digest_alone() -> None:
    _, digest = watch_body(FULL, None)
    body, again = watch_body({**FULL, "path_version": 8}, digest)  # the version is not a report
    assert again == digest
    assert body == {
        "path": "prod/shop",
        "path_version": 8,
        "instance_id": "i-1",
        "reports_digest": digest,
    }


@pytest.mark.parametrize(
    "change",
    [
        {"held": {"db": "v3"}},
        {"versions": {"db": ["v2", "v3"]}},
        {"processes": {"4242": {"db": "v2"}, "4243": {"db": "v2"}}},
        {"processes": {}},
    ],
)
def test_changed_reports_go_in_full_again(change: dict[str, Any]) -> None:
    _, taken = watch_body(FULL, None)
    body, digest = watch_body({**FULL, **change}, taken)
    assert body == {**FULL, **change}
    assert digest != taken


@pytest.mark.parametrize("taken", [False, True])
def test_kmsd_computes_the_digest_the_agent_does(taken: bool) -> None:
    """The agent hashes what it sends; kmsd hashes what it parsed: the same digest."""
    reports = {
        "held": {f"s{i}": f"v{i}-é" for i in range(50)},
        "versions": {f"s{i}": [f"v{i}-é", "old"] for i in range(50)},
        "processes": {"web-2": {"s3": "v3-é"}, "4242": {}},
    }
    first, digest = watch_body({**FULL, **reports}, None)
    body, _ = watch_body({**FULL, **reports}, digest if taken else None)
    req = parse_watch(orjson.loads(orjson.dumps(body)))  # over the wire
    assert req.reports_digest == digest
    assert req.reports_sent is not taken
    assert parse_watch(orjson.loads(orjson.dumps(first))).reports_digest == digest


def test_reported_processes_keep_the_most_recent_within_both_limits() -> None:
    reads = {f"p{i}": {"db": "v1", "tls": "c1"} for i in range(10)}  # oldest first
    assert list(reported_processes(reads, max_processes=3)) == ["p7", "p8", "p9"]
    assert list(reported_processes(reads, max_reads=5)) == ["p8", "p9"]
    assert reported_processes(reads, max_reads=1) == {}
    assert reported_processes({}) == {}
    few = {"a": {"db": "v1"}, "b": {}}
    assert reported_processes(few) == few
    assert reported_processes(few) is not few


def test_the_default_limits_keep_a_big_full_report_under_kmsd_s_watch_limit() -> None:
    names = [f"secret-{i:05d}" for i in range(2000)]
    vid = "0f6c3a9e-2d1b-4c8e-9a7f-5b4d3c2e1f0a"
    reads = {f"pid-{p}": dict.fromkeys(names, vid) for p in range(400)}  # each read all
    processes = reported_processes(reads)
    assert len(processes) <= MAX_REPORTED_PROCESSES
    assert sum(map(len, processes.values())) == 50_000  # 25 whole processes
    assert list(processes)[-1] == "pid-399"
    assert len(orjson.dumps(processes)) < WATCH_MAX_BODY / 4
