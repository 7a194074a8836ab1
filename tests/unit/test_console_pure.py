"""The console's pure parts: CSRF tokens, where a link may lead, the commands a rotation
offers, and how a fragment is framed as a server-sent event."""

from __future__ import annotations

import pytest

from kmsd.domain.bearer import csrf_matches, csrf_token
from kmsd.domain.rotation import offered
from kmsd.http.console.rotations import event
from kmsd.http.console.session import HOME, safe_next


def test_a_csrf_token_belongs_to_one_session_and_reveals_nothing_of_it() -> None:
    one, two = "kmsdc.aaaa", "kmsdc.bbbb"
    assert csrf_token(one) == csrf_token(one)
    assert csrf_token(one) != csrf_token(two)
    assert "aaaa" not in csrf_token(one)
    assert csrf_matches(one, csrf_token(one))
    assert not csrf_matches(one, csrf_token(two))
    assert not csrf_matches(one, "")
    assert not csrf_matches(one, csrf_token(one) + "x")


@pytest.mark.parametrize(
    ("given", "goes"),
    [
        ("/ui/rotations", "/ui/rotations"),
        ("/ui/rotations/12", "/ui/rotations/12"),
        ("/ui/node/prod/pay", "/ui/node/prod/pay"),
        ("", HOME),
        ("/ui", HOME),
        ("//evil.example/ui/x", HOME),
        ("https://evil.example/ui", HOME),
        ("/ui//evil.example", HOME),
        ("/ui/../v1/nodes", HOME),
        ("/ui/x\r\nSet-Cookie: a=b", HOME),
        ("/v1/nodes", HOME),
    ],
)
def test_a_link_leads_only_to_a_console_page(given: str, goes: str) -> None:
    assert safe_next(given) == goes


@pytest.mark.parametrize(
    ("phase", "paused", "verbs"),
    [
        ("pending", False, ["advance", "pause", "abort"]),
        ("pending", True, ["advance", "resume", "abort"]),
        ("promoted", False, ["advance", "pause", "rollback"]),
        ("done", False, ["rollback"]),
        ("aborted", False, []),
        ("rolled_back", False, []),
    ],
)
def test_a_rotation_offers_the_commands_that_apply(
    phase: str, paused: bool, verbs: list[str]
) -> None:
    steps = offered(phase, paused, "v-new", "v-old")
    assert [verb for verb, _ in steps] == verbs
    what = dict(steps)
    if "advance" in what:
        assert ("v-new" if phase == "pending" else "v-old") in what["advance"]
    if "rollback" in what:
        assert "v-old current again" in what["rollback"]


def test_a_fragment_is_one_event_whatever_its_lines() -> None:
    assert event("<p>a</p>\n<p>b</p>") == b"data: <p>a</p>\ndata: <p>b</p>\n\n"
    assert event("") == b"data: \n\n"
