"""Two reports of one instance before a flush: what the adoption buffer keeps (merged)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from kmsd.hub.adoption import Report, merged

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FULL = Report(
    "prod/shop",
    "i-1",
    "role/app",
    "10.0.0.1",
    ("4242",),
    {"db": "v1"},
    3,
    T0,
    processes={"4242": {"db": "v1"}},
    versions={"db": ["v1"]},
    digest="d1",
)
# A later poll that sent only the digest: liveness, no reports.
DIGEST = Report(
    "prod/shop",
    "i-1",
    "role/app",
    "10.0.0.2",
    (),
    {},
    4,
    T0 + timedelta(seconds=60),
    role="observer",
    digest="d1",
    full=False,
)
OTHER_FULL = replace(FULL, held={"db": "v2"}, digest="d2", seen_at=T0 + timedelta(seconds=60))


@pytest.mark.parametrize(
    ("older", "newer", "expected"),
    [
        (None, FULL, FULL),
        (None, DIGEST, DIGEST),
        # The digest of the buffered full report: keep its reports, take the poll's liveness.
        (
            FULL,
            DIGEST,
            replace(FULL, ip="10.0.0.2", path_version=4, seen_at=DIGEST.seen_at, role="observer"),
        ),
        (FULL, OTHER_FULL, OTHER_FULL),  # newer reports replace older ones
        (DIGEST, FULL, FULL),
        (replace(DIGEST, digest="d0"), DIGEST, DIGEST),
        # A digest of other reports than the buffered ones: checked against the row, kept.
        (OTHER_FULL, DIGEST, DIGEST),
    ],
)
def test_merged(older: Report | None, newer: Report, expected: Report) -> None:
    assert merged(older, newer) == expected
