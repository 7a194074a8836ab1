"""Segment names and tree paths (kmsd.domain.names)."""

from __future__ import annotations

import pytest

from kmsd.domain.names import MAX_DEPTH, SEGMENT_RULE, NodePath, check_segment, kind_of_depth
from kmsd.errors import InvalidInput

VALID_SEGMENTS = [
    "a",
    "0",
    "a.b_c-d",
    "9lives",
    "a" * 63,
    "x" + "-" * 62,
]

INVALID_SEGMENTS = [
    "",
    "A",
    "aB",
    "-a",
    ".a",
    "_a",
    "a" * 64,
    "a b",
    "ä",
    "aä",
    "a/b",
    "a\n",
    "\na",
    "a:b",
    "a*",
]


@pytest.mark.parametrize("segment", VALID_SEGMENTS)
def test_check_segment_accepts_valid_names(segment: str) -> None:
    assert check_segment(segment) == segment


@pytest.mark.parametrize("segment", INVALID_SEGMENTS)
def test_check_segment_rejects_invalid_names(segment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_segment(segment, "secret name")
    err = info.value
    assert err.http_status == 400
    assert SEGMENT_RULE in err.detail
    assert err.detail.startswith("secret name ")
    assert err.extra == {"rule": SEGMENT_RULE}
    assert err.problem()["status"] == 400


def test_check_segment_shortens_very_long_names_in_detail() -> None:
    with pytest.raises(InvalidInput) as info:
        check_segment("a" * 500)
    assert "a" * 78 not in info.value.detail
    assert "..." in info.value.detail


@pytest.mark.parametrize(
    ("raw", "segments"),
    [
        ("ns", ("ns",)),
        ("ns/app", ("ns", "app")),
        ("ns/app/eu-west-1/c.1", ("ns", "app", "eu-west-1", "c.1")),
        ("/".join("abcdef"[:MAX_DEPTH]), tuple("abcdef"[:MAX_DEPTH])),
        ("/".join(["s" * 63] * 2), ("s" * 63, "s" * 63)),
    ],
)
def test_parse_valid_paths(raw: str, segments: tuple[str, ...]) -> None:
    path = NodePath.parse(raw)
    assert path.segments == segments
    assert path.depth == len(segments)
    assert str(path) == raw


@pytest.mark.parametrize(
    ("raw", "mentions"),
    [
        ("", "empty"),
        ("/ns", SEGMENT_RULE),
        ("ns/", SEGMENT_RULE),
        ("/", SEGMENT_RULE),
        ("ns//app", SEGMENT_RULE),
        ("//", SEGMENT_RULE),
        ("ns/App", SEGMENT_RULE),
        ("ns/a b", SEGMENT_RULE),
        ("ns/" + "a" * 64, SEGMENT_RULE),
        ("/".join(["a"] * (MAX_DEPTH + 1)), f"deeper than {MAX_DEPTH}"),
        ("/".join(["a"] * 50), f"deeper than {MAX_DEPTH}"),
    ],
)
def test_parse_rejects_bad_paths(raw: str, mentions: str) -> None:
    with pytest.raises(InvalidInput) as info:
        NodePath.parse(raw)
    assert info.value.http_status == 400
    assert mentions in info.value.detail


def test_max_depth_is_six() -> None:
    # The SM name-length budget in the module docstring is computed for this depth.
    assert MAX_DEPTH == 6


@pytest.mark.parametrize(
    ("raw", "parent"),
    [
        ("ns", None),
        ("ns/app", "ns"),
        ("ns/app/r", "ns/app"),
        ("ns/app/r/c", "ns/app/r"),
    ],
)
def test_parent(raw: str, parent: str | None) -> None:
    got = NodePath.parse(raw).parent
    if parent is None:
        assert got is None
    else:
        assert got == NodePath.parse(parent)


@pytest.mark.parametrize(
    ("raw", "is_namespace"),
    [("ns", True), ("ns/app", False), ("ns/app/r", False)],
)
def test_is_namespace(raw: str, is_namespace: bool) -> None:
    assert NodePath.parse(raw).is_namespace is is_namespace


@pytest.mark.parametrize(
    ("raw", "application"),
    [
        ("ns/app", "ns/app"),
        ("ns/app/r", "ns/app"),
        ("ns/app/r/c/d/e", "ns/app"),
    ],
)
def test_application(raw: str, application: str) -> None:
    assert str(NodePath.parse(raw).application) == application


def test_application_of_namespace_is_invalid_input() -> None:
    with pytest.raises(InvalidInput) as info:
        _ = NodePath.parse("ns").application
    assert info.value.http_status == 400
    assert "namespace" in info.value.detail


@pytest.mark.parametrize(
    ("raw", "ancestors"),
    [
        ("ns", []),
        ("ns/app", ["ns/app"]),
        ("ns/app/r", ["ns/app", "ns/app/r"]),
        ("ns/app/r/c", ["ns/app", "ns/app/r", "ns/app/r/c"]),
    ],
)
def test_ancestors_from_application(raw: str, ancestors: list[str]) -> None:
    assert [str(p) for p in NodePath.parse(raw).ancestors_from_application()] == ancestors


def test_paths_compare_by_segments_and_are_hashable() -> None:
    assert NodePath.parse("ns/app") == NodePath(("ns", "app"))
    assert len({NodePath.parse("ns/app"), NodePath(("ns", "app"))}) == 1


@pytest.mark.parametrize(
    ("depth", "kind"), [(1, "namespace"), (2, "application"), (3, "node"), (6, "node")]
)
def test_kind_of_depth(depth: int, kind: str) -> None:
    assert kind_of_depth(depth) == kind
