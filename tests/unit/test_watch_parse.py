"""Watch bodies and timeouts (kmsd.domain.watch)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from kmsd.domain.names import NodePath
from kmsd.domain.watch import (
    MAX_HELD,
    MAX_PROCESS_IDS,
    REPORT_FIELDS,
    WATCH_MAX_BODY,
    parse_timeout,
    parse_watch,
    reports_digest,
)
from kmsd.errors import InvalidInput

BASE: dict[str, Any] = {"path": "ns/app", "instance_id": "i-1"}


def body(**changes: Any) -> dict[str, Any]:
    """BASE with ``changes`` applied; a value of ``...`` deletes the key."""
    doc = {**BASE, **changes}
    return {k: v for k, v in doc.items() if v is not ...}


# -- parse_watch: accepted ------------------------------------------------------------------


def test_parse_watch_defaults() -> None:
    req = parse_watch(BASE)
    assert req.path == NodePath(("ns", "app"))
    assert str(req.path) == "ns/app"
    assert req.path_version == 0
    assert req.instance_id == "i-1"
    assert req.app_process_ids == ()
    assert list(req.app_process_ids) == []
    assert req.held == {}


@pytest.mark.parametrize(
    ("doc", "field", "expected"),
    [
        (body(path="ns/app/r1/x/y/z"), "path", NodePath(("ns", "app", "r1", "x", "y", "z"))),
        (body(path_version=0), "path_version", 0),
        (body(path_version=7), "path_version", 7),
        (body(path_version=2**63 - 1), "path_version", 2**63 - 1),
        (body(instance_id="a"), "instance_id", "a"),
        (body(instance_id="A" * 128), "instance_id", "A" * 128),
        (body(instance_id="0host.x_y:1@z/w-2"), "instance_id", "0host.x_y:1@z/w-2"),
        (body(app_process_ids=[]), "app_process_ids", ()),
        (body(app_process_ids=["p1", 42, 0, -3]), "app_process_ids", ("p1", "42", "0", "-3")),
        (body(app_process_ids=["x" * 64]), "app_process_ids", ("x" * 64,)),
        (body(app_process_ids=[10**63]), "app_process_ids", (str(10**63),)),
        (body(app_process_ids=["p"] * MAX_PROCESS_IDS), "app_process_ids", ("p",) * 1024),
        (body(held={"db-pass": "v1"}), "held", {"db-pass": "v1"}),
        (body(held={"a": "x" * 128}), "held", {"a": "x" * 128}),
        (
            body(held={f"s{i}": "v" for i in range(MAX_HELD)}),
            "held",
            {f"s{i}": "v" for i in range(50_000)},
        ),
    ],
)
def test_parse_watch_accepts(doc: dict[str, Any], field: str, expected: Any) -> None:
    assert getattr(parse_watch(doc), field) == expected


def test_parse_watch_copies_held() -> None:
    held = {"a": "v1"}
    req = parse_watch(body(held=held))
    held["b"] = "v2"
    assert req.held == {"a": "v1"}


# -- parse_watch: refused -------------------------------------------------------------------

INVALID: list[tuple[str, dict[str, Any]]] = [
    ("path missing", body(path=...)),
    ("path None", body(path=None)),
    ("path not a string", body(path=["ns", "app"])),
    ("path an int", body(path=5)),
    ("path empty", body(path="")),
    ("path namespace only", body(path="ns")),
    ("path upper case", body(path="ns/App")),
    ("path empty segment", body(path="ns//app")),
    ("path trailing slash", body(path="ns/app/")),
    ("path leading slash", body(path="/ns/app")),
    ("path too deep", body(path="a/b/c/d/e/f/g")),
    ("path_version negative", body(path_version=-1)),
    ("path_version bool true", body(path_version=True)),
    ("path_version bool false", body(path_version=False)),
    ("path_version string", body(path_version="3")),
    ("path_version float", body(path_version=1.0)),
    ("path_version None", body(path_version=None)),
    ("path_version 2**63", body(path_version=2**63)),
    ("path_version huge", body(path_version=2**70)),
    ("instance_id missing", body(instance_id=...)),
    ("instance_id empty", body(instance_id="")),
    ("instance_id not a string", body(instance_id=12)),
    ("instance_id with space", body(instance_id="i 1")),
    ("instance_id with newline", body(instance_id="i-1\n")),
    ("instance_id leading dash", body(instance_id="-i")),
    ("instance_id 129 chars", body(instance_id="a" * 129)),
    ("app_process_ids not a list", body(app_process_ids="p1")),
    ("app_process_ids a tuple", body(app_process_ids=("p1",))),
    ("app_process_ids a dict", body(app_process_ids={"p": 1})),
    ("app_process_ids too many", body(app_process_ids=["p"] * (MAX_PROCESS_IDS + 1))),
    ("app_process_ids bool item", body(app_process_ids=[True])),
    ("app_process_ids dict item", body(app_process_ids=[{"pid": 1}])),
    ("app_process_ids list item", body(app_process_ids=[["p"]])),
    ("app_process_ids float item", body(app_process_ids=[1.5])),
    ("app_process_ids None item", body(app_process_ids=[None])),
    ("app_process_ids 65-char item", body(app_process_ids=["x" * 65])),
    ("app_process_ids 65-digit int", body(app_process_ids=[10**64])),
    ("held not a dict", body(held=[["a", "v1"]])),
    ("held a string", body(held="a=v1")),
    ("held bad name upper", body(held={"Bad": "v1"})),
    ("held bad name slash", body(held={"a/b": "v1"})),
    ("held empty name", body(held={"": "v1"})),
    ("held version id int", body(held={"a": 1})),
    ("held version id None", body(held={"a": None})),
    ("held version id empty", body(held={"a": ""})),
    ("held version id 129 chars", body(held={"a": "x" * 129})),
    ("held too many", body(held={f"s{i}": "v" for i in range(MAX_HELD + 1)})),
    ("versions a list", body(versions=[["a", "v1"]])),
    ("versions value a string", body(versions={"a": "v1"})),
    ("versions bad name", body(versions={"A": ["v1"]})),
    ("versions empty id", body(versions={"a": [""]})),
    ("versions too many ids", body(versions={"a": [f"v{i}" for i in range(65)]})),
    ("versions too many", body(versions={f"s{i}": [] for i in range(MAX_HELD + 1)})),
    (
        "processes' reads too many",
        body(processes={"p1": {f"s{i}": "v" for i in range(MAX_HELD + 1)}}),
    ),
    ("reports_digest upper case", body(reports_digest="A" * 64)),
    ("reports_digest short", body(reports_digest="a" * 63)),
    ("reports_digest long", body(reports_digest="a" * 65)),
    ("reports_digest prefixed", body(reports_digest="sha256:" + "a" * 64)),
    ("reports_digest not a string", body(reports_digest=None)),
    ("reports_digest and held", body(reports_digest="a" * 64, held={})),
    ("reports_digest and versions", body(reports_digest="a" * 64, versions={})),
    ("reports_digest and processes", body(reports_digest="a" * 64, processes={})),
    ("reports_digest and pids", body(reports_digest="a" * 64, app_process_ids=[])),
    ("reports_digest and a bad role", body(reports_digest="a" * 64, role="x")),
    ("processes a list", body(processes=[["p1", {"a": "v1"}]])),
    ("processes empty pid", body(processes={"": {"a": "v1"}})),
    ("processes 65-char pid", body(processes={"x" * 65: {"a": "v1"}})),
    ("processes value not a dict", body(processes={"p1": "v1"})),
    ("processes bad name", body(processes={"p1": {"A": "v1"}})),
    ("processes version id int", body(processes={"p1": {"a": 1}})),
    ("processes too many", body(processes={f"p{i}": {} for i in range(MAX_PROCESS_IDS + 1)})),
    (
        "processes and pids together too many",
        body(
            app_process_ids=[f"q{i}" for i in range(MAX_PROCESS_IDS)],
            processes={"p1": {"a": "v1"}},
        ),
    ),
]


def test_parse_watch_processes_are_app_processes_too() -> None:
    req = parse_watch(body(app_process_ids=["7"], processes={"7": {"a": "v1"}, "9": {}}))
    assert req.processes == {"7": {"a": "v1"}, "9": {}}
    assert req.app_process_ids == ("7", "9")


def test_parse_watch_versions_held_per_secret() -> None:
    req = parse_watch(body(versions={"db": ["v2", "v3", "v1"], "tls": []}))
    assert req.versions == {"db": ["v2", "v3", "v1"], "tls": []}
    assert parse_watch(BASE).versions == {}


def test_parse_watch_without_processes() -> None:
    assert parse_watch(BASE).processes == {}


@pytest.mark.parametrize("doc", [d for _, d in INVALID], ids=[name for name, _ in INVALID])
def test_parse_watch_refuses(doc: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        parse_watch(doc)


def test_limits_are_the_documented_ones() -> None:
    assert MAX_PROCESS_IDS == 1024
    assert MAX_HELD == 50_000
    assert WATCH_MAX_BODY == 12 * 1024 * 1024


# -- reports, or their digest ---------------------------------------------------------------

REPORTS: dict[str, Any] = {
    "held": {"db": "v2", "tls": "c1"},
    "versions": {"db": ["v2", "v1"], "tls": ["c1"]},
    "processes": {"4242": {"db": "v2"}},
}


def test_a_full_report_carries_the_digest_of_its_reports() -> None:
    req = parse_watch(body(path_version=3, **REPORTS))
    assert req.reports_sent
    assert req.reports_digest == reports_digest(REPORTS)
    assert req.reports_digest == reports_digest(body(path_version=9, role="observer", **REPORTS))


def test_a_body_without_reports_has_the_digest_of_none() -> None:
    req = parse_watch(BASE)
    assert (req.reports_sent, req.reports_digest) == (True, reports_digest({}))


def test_a_digest_stands_for_the_reports() -> None:
    digest = reports_digest(REPORTS)
    req = parse_watch(body(path_version=3, role="observer", reports_digest=digest))
    assert (req.reports_sent, req.reports_digest) == (False, digest)
    assert (req.path_version, req.role, req.instance_id) == (3, "observer", "i-1")
    assert (req.held, req.versions, req.processes, req.app_process_ids) == ({}, {}, {}, ())


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ({"held": {"a": "1", "b": "2"}}, {"held": {"b": "2", "a": "1"}}, True),  # key order
        (
            {"processes": {"p": {"a": "1", "b": "2"}}},
            {"processes": {"p": {"b": "2", "a": "1"}}},
            True,
        ),
        ({"held": {}}, {"held": {}, "path": "ns/app", "path_version": 7}, True),  # not reports
        ({"versions": {"a": ["1", "2"]}}, {"versions": {"a": ["2", "1"]}}, False),  # list order
        ({"held": {"a": "1"}}, {"held": {"a": "2"}}, False),
        ({"held": {}}, {}, False),  # sent empty is not absent
        ({"held": {}}, {"versions": {}}, False),
        ({"app_process_ids": [42]}, {"app_process_ids": ["42"]}, True),  # stored as text
        ({"app_process_ids": [10**63]}, {"app_process_ids": [str(10**63)]}, True),
    ],
)
def test_reports_digest_is_canonical(a: dict[str, Any], b: dict[str, Any], same: bool) -> None:
    assert (reports_digest(a) == reports_digest(b)) is same


def test_reports_digest_is_sha256_of_sorted_compact_json() -> None:
    # The rule written out, for anyone computing it in another language.
    doc = {"versions": {"b": ["v"]}, "held": {"é": "1", "a": "2"}, "path": "x"}
    canonical = '{"held":{"a":"2","é":"1"},"versions":{"b":["v"]}}'.encode()
    assert reports_digest(doc) == hashlib.sha256(canonical).hexdigest()
    assert REPORT_FIELDS == ("app_process_ids", "held", "processes", "versions")


# -- parse_timeout --------------------------------------------------------------------------

DEFAULT = 25.0
MAXIMUM = 300.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, DEFAULT),
        ("0", 0.0),
        ("0.5", 0.5),
        ("30", 30.0),
        (" 30 ", 30.0),
        ("300", MAXIMUM),
        ("1000", MAXIMUM),
        ("1e400", MAXIMUM),
        ("inf", MAXIMUM),
        ("Infinity", MAXIMUM),
    ],
)
def test_parse_timeout_accepts(raw: str | None, expected: float) -> None:
    got = parse_timeout(raw, default=DEFAULT, maximum=MAXIMUM)
    assert got == expected
    assert isinstance(got, float)


@pytest.mark.parametrize(
    "raw", ["-1", "-0.001", "-inf", "abc", "", "nan", "NaN", "+nan", "-nan", "1s"]
)
def test_parse_timeout_refuses(raw: str) -> None:
    with pytest.raises(InvalidInput):
        parse_timeout(raw, default=DEFAULT, maximum=MAXIMUM)
