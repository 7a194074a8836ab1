"""kmsctl iam-policy: the shape asked for, and drift told to people."""

from __future__ import annotations

import pytest

from kmsd.cli import kmsctl
from kmsd.cli.admin_verbs import drift_text


@pytest.mark.parametrize(
    ("argv", "target", "shape"),
    [
        (["iam-policy", "app", "prod/pay"], "app", "prefix"),  # the shape that does not drift
        (["iam-policy", "app", "prod/pay", "--shape", "exact"], "app", "exact"),
        (["iam-policy", "drift", "prod/pay"], "drift", "prefix"),
    ],
)
def test_the_shape_and_the_target(argv: list[str], target: str, shape: str) -> None:
    args = kmsctl.build_parser().parse_args(argv)
    assert (args.target, args.shape) == (target, shape)


DOC = {"path": "prod/pay", "fetched_at": "2026-12-01T10:00:00+00:00", "shape": "exact"}


@pytest.mark.parametrize(
    ("doc", "lines"),
    [
        (
            {"path": "prod/pay", "fetched_at": None, "shape": None, "needs_reapply": True},
            ["prod/pay: no policy fetched through kmsd yet; apply: kmsctl iam-policy app"],
        ),
        (
            DOC | {"needs_reapply": False, "uncovered": [], "added_since": []},
            ["prod/pay: the policy fetched 2026-12-01T10:00:00+00:00 (exact) still covers it"],
        ),
        (
            DOC
            | {"needs_reapply": True, "uncovered": ["arn:x:db"], "added_since": ["prod/pay/db"]},
            [
                "prod/pay: the policy fetched 2026-12-01T10:00:00+00:00 (exact) must be applied"
                " again",
                "  not covered: arn:x:db",
                "  added since: prod/pay/db",
            ],
        ),
    ],
)
def test_drift_is_said_in_one_line_then_what_is_missing(
    doc: dict[str, object], lines: list[str]
) -> None:
    assert drift_text(doc).splitlines() == lines
