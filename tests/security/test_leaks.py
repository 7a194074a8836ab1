"""Suite-wide: no token and no canary of any case, anywhere kmsd keeps or shows things.

Runs after every other case of the suite (conftest orders it last). The markers are every
session token the suite was issued (admin, rotator, victim, attacker, outsider, the console
session) and the canary of every case that ran; each place is searched for all of them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.security.conftest import Target
from tests.security.wire import Req, exchange

KLASS = "leaks (suite-wide)"


def kmsd_log(target: Target) -> list[tuple[str, bytes]]:
    return [("kmsd's stdout and stderr", target.kmsd.log.read_bytes())]


def audit_rows(target: Target) -> list[tuple[str, bytes]]:
    rows = target.db("SELECT seq, audit_log::text AS row FROM audit_log ORDER BY seq")
    assert rows, "the audit trail is empty: the suite's calls were not audited"
    return [(f"audit_log seq {r['seq']}", r["row"].encode()) for r in rows]


def metrics(target: Target) -> list[tuple[str, bytes]]:
    answer = exchange(target.kmsd.port, Req("GET", "/metrics").render({}))
    assert answer.status == 200, answer
    return [("/metrics", answer.body)]


def console_pages(target: Target) -> list[tuple[str, bytes]]:
    """The pages fetched by the cases, and every page an operator could open now."""
    target.page("/ui/rotations")
    for row in target.db("SELECT id FROM rotations ORDER BY id"):
        target.page(f"/ui/rotations/{row['id']}")
    return target.pages


PLACES: list[tuple[str, Callable[[Target], list[tuple[str, bytes]]]]] = [
    ("log", kmsd_log),
    ("audit-log", audit_rows),
    ("metrics", metrics),
    ("console-pages", console_pages),
]


@pytest.mark.parametrize(("place", "read"), PLACES, ids=[p for p, _ in PLACES])
def test_no_marker_anywhere(
    target: Target, place: str, read: Callable[[Target], list[tuple[str, bytes]]]
) -> None:
    markers = target.markers()
    assert len(markers) > len(target.tokens), "no case ran: nothing to look for"
    found = [(where, what) for where, text in read(target) for what in target.leaked_in(text)]
    target.outcome(
        KLASS,
        place,
        held=not found,
        accepted=bool(found),
        detail=f"{len(markers)} markers; found {found[:5]}",
    )
    assert not found, found


def test_no_unhandled_error_in_the_log(target: Target) -> None:
    """Every refusal was a decision: kmsd logged no unhandled error (each would be a 500)."""
    log = target.kmsd.log.read_text(errors="replace")
    found = [
        line[:200] for line in log.splitlines() if "unhandled_error" in line or "Traceback" in line
    ]
    target.outcome(
        KLASS, "no-unhandled-error", held=not found, accepted=False, detail=f"{found[:3]}"
    )
    assert not found, found
