"""Class 10, fence gaps: what one may not reach is refused, and what one may not see is absent.

- ``KMSD_ALLOWED_CIDRS`` fences every route but the load balancer's ``/healthz``: console
  pages, event streams, the console login link, ``/metrics``, the OpenAPI document, sign-in.
  The suite's server allows 127.0.0.1 and 127.0.0.2; these cases come from 127.0.0.3, with
  valid credentials, and get 403.
- An open rotation event stream ends ("access revoked") once the viewer's binding is revoked.
- Rotation ids, references, shares and bindings of an application the caller cannot see
  answer 404, exactly like missing ones (no existence oracle). The outsider has edit on
  sec/other only.
- Ids, limits and binding patterns take ASCII digits only: ``int()`` also reads Arabic-Indic
  (U+0660...) and fullwidth (U+FF10...) digits, so two readers could disagree about a name.
"""

from __future__ import annotations

import http.client
import socket
from typing import Any
from urllib.parse import quote

import pytest

from tests.security.conftest import APP, OTHER, OUTSIDE, Target, console_session
from tests.security.signing import signed_body
from tests.security.wire import Case, Header, Req, exchange

KLASS = "10 fence gaps"
ARABIC = quote("\u0661\u0662\u0663")  # 123 in Arabic-Indic digits, as a client encodes them
FULLWIDTH = quote("\uff11\uff12\uff13")  # 123 in fullwidth digits


def outside(path: str, *headers: Header, method: str = "GET", body: Any = None) -> Req:
    return Req(method, path, headers=headers, body=body, source=OUTSIDE)


def as_(who: str, method: str, path: str, body: Any = None) -> Req:
    return Req(method, path, headers=[("Authorization", f"Bearer {{{who}}}")], body=body)


def page(who: str, path: str) -> Req:
    return Req("GET", path, headers=[("Cookie", f"kmsd_console={{{who}}}")])


def binding(principal: str, cidrs: list[str] | None = None) -> Req:
    body = {"principal": principal, "path": APP, "permission": "read", "cidrs": cidrs or []}
    return as_("api", "POST", "/v1/bindings", body)


def outside_login(target: Target) -> Req:
    body = signed_body(target.identities["victim"], target.moto)
    return outside("/v1/auth/aws/login", method="POST", body=body)


COOKIE: Header = ("Cookie", "kmsd_console={console}")
BEARER_API = b"Authorization: Bearer {api}\r\n"
API: Header = ("Authorization", "Bearer {api}")
ROT = "{rotation}"  # a pending rotation of APP/fence
MISSING = "999999999"

CASES: list[Any] = [
    # the fence: valid credentials, from an address outside KMSD_ALLOWED_CIDRS
    Case("outside-console-list", outside("/ui/rotations", COOKIE), 403),
    Case("outside-console-page", outside(f"/ui/rotations/{ROT}", COOKIE), 403),
    Case("outside-event-stream", outside(f"/ui/rotations/{ROT}/events", COOKIE), 403),
    Case("outside-login-link", outside("/ui/login?code={link}"), 403),
    Case("outside-metrics", outside("/metrics"), 403),
    Case("outside-metrics-encoded", outside("/%6detrics"), 403),
    Case("outside-metrics-dot-segment", outside("/healthz/../metrics"), 403),
    Case("outside-openapi", outside("/v1/openapi.json"), 403),
    Case("outside-sign-in", outside_login, 403),
    Case("outside-api", outside("/v1/auth/whoami", API), 403),
    Case(
        "outside-watch", outside("/v1/watch?timeout=0", API, method="POST", body={"path": APP}), 403
    ),
    Case("outside-no-route", outside("/no/such/route"), 403),
    Case(
        "outside-spoofed-xff",
        outside("/v1/auth/whoami", API, ("X-Forwarded-For", "127.0.0.1")),
        403,
    ),
    Case("outside-spoofed-forwarded", outside("/metrics", ("Forwarded", "for=127.0.0.1")), 403),
    # a stream that outlives the viewer's access
    Case("event-stream-after-revoke", Req(), 0, note="see _stream_case"),
    # what the outsider cannot see is not there
    Case("hidden-rotation", as_("outsider", "GET", f"/v1/rotations/{ROT}"), 404),
    Case("missing-rotation", as_("outsider", "GET", f"/v1/rotations/{MISSING}"), 404),
    Case("hidden-rotation-advance", as_("outsider", "POST", f"/v1/rotations/{ROT}/advance"), 404),
    Case("hidden-rotation-abort", as_("outsider", "POST", f"/v1/rotations/{ROT}/abort"), 404),
    Case("hidden-rotation-page", page("outsider_console", f"/ui/rotations/{ROT}"), 404),
    Case("hidden-rotation-events", page("outsider_console", f"/ui/rotations/{ROT}/events"), 404),
    Case("missing-rotation-page", page("outsider_console", f"/ui/rotations/{MISSING}"), 404),
    Case(
        "ref-to-hidden-secret",
        as_("outsider", "PUT", f"/v1/refs/{OTHER}/r1", {"target": f"{APP}/fence"}),
        404,
    ),
    Case(
        "ref-to-missing-secret",
        as_("outsider", "PUT", f"/v1/refs/{OTHER}/r2", {"target": f"{APP}/nope"}),
        404,
    ),
    Case("hidden-binding-revoke", as_("outsider", "DELETE", "/v1/bindings/{pay_binding}"), 404),
    Case("missing-binding-revoke", as_("outsider", "DELETE", f"/v1/bindings/{MISSING}"), 404),
    Case(
        "share-hidden-secret",
        as_("outsider", "POST", "/v1/shares", {"secret": f"{APP}/fence", "to": OTHER}),
        404,
    ),
    Case(
        "share-missing-secret",
        as_("outsider", "POST", "/v1/shares", {"secret": f"{APP}/nope", "to": OTHER}),
        404,
    ),
    Case(
        "unshare-hidden-secret",
        as_("outsider", "DELETE", f"/v1/shares?secret={APP}/fence&to={OTHER}"),
        404,
    ),
    # digits of other scripts in ids, limits and binding patterns
    Case("rotation-id-arabic", as_("api", "GET", f"/v1/rotations/{ARABIC}"), 404),
    Case("rotation-id-fullwidth", as_("api", "GET", f"/v1/rotations/{FULLWIDTH}"), 404),
    Case("rotation-command-arabic", as_("api", "POST", f"/v1/rotations/{ARABIC}/advance"), 404),
    Case("console-page-arabic", page("console", f"/ui/rotations/{ARABIC}"), 404),
    Case("console-events-fullwidth", page("console", f"/ui/rotations/{FULLWIDTH}/events"), 404),
    Case("binding-id-arabic", as_("api", "DELETE", f"/v1/bindings/{ARABIC}"), 404),
    Case("binding-id-fullwidth", as_("api", "DELETE", f"/v1/bindings/{FULLWIDTH}"), 404),
    Case("audit-limit-arabic", as_("api", "GET", f"/v1/audit?limit={ARABIC}"), 400),
    Case("rotations-limit-fullwidth", as_("api", "GET", f"/v1/rotations?limit={FULLWIDTH}"), 400),
    Case("expiring-days-arabic", as_("api", "GET", f"/v1/expiring?days={ARABIC}"), 400),
    Case(
        "watch-timeout-fullwidth",
        as_("api", "POST", f"/v1/watch?timeout={FULLWIDTH}", {"path": APP, "path_version": 0}),
        400,
    ),
    Case("binding-account-arabic", binding("arn:aws:iam::" + "\u0661" * 12 + ":role/app"), 400),
    Case("binding-account-fullwidth", binding("arn:aws:iam::" + "\uff11" * 12 + ":role/app"), 400),
    Case("binding-role-arabic", binding("arn:aws:iam::123456789012:role/app\u0661"), 400),
    Case(
        "binding-cidr-arabic",
        binding("arn:aws:iam::123456789012:role/app", ["\u0661\u0660.0.0.0/8"]),
        400,
    ),
    Case(
        "rotation-id-raw-utf8",
        Req(raw=b"GET /v1/rotations/\xd9\xa1 HTTP/1.1\r\nHost: k\r\n" + BEARER_API + b"\r\n"),
        400,
    ),
]


@pytest.fixture(scope="module")
def hidden(target: Target) -> None:
    """A pending rotation of APP/fence, a console link, and the outsider's console session."""
    target.call("PUT", f"/v1/secrets/{APP}/fence", {"kind": "json", "value": {"p": "1"}})
    rot = target.call("POST", "/v1/rotations", {"path": APP, "name": "fence", "value": {"p": "2"}})
    target.values["rotation"] = str(rot["id"])
    link = target.call("POST", "/v1/console/links")["path"]
    target.tokens["link"] = link.split("code=", 1)[1]  # a credential: a leak marker too
    target.tokens["outsider_console"] = console_session(target, "outsider")
    bindings = target.call("GET", f"/v1/bindings?path={APP}")["bindings"]
    target.values["pay_binding"] = str(next(b["id"] for b in bindings if b["path"] == APP))


def _stream_case(target: Target) -> None:
    viewer = target.identities["outsider"].arn
    grant = target.call(
        "POST", "/v1/bindings", {"principal": viewer, "path": APP, "permission": "view"}
    )
    sock = socket.create_connection(("127.0.0.1", target.kmsd.port), timeout=10)
    rest: list[bytes] = []
    try:
        raw = page("outsider_console", f"/ui/rotations/{target.values['rotation']}/events")
        sock.sendall(raw.render(target.tokens))
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        status = resp.status
        first = resp.read1(65536) if status == 200 else b""
        target.call("DELETE", f"/v1/bindings/{grant['id']}")
        try:
            while chunk := resp.read1(65536):  # until kmsd ends the stream (or 10 s pass)
                rest.append(chunk)
        except TimeoutError:
            rest.append(b"<still open after 10 s>")
    finally:
        sock.close()
    tail = b"".join(rest)
    ended = tail.endswith(b"event: end\ndata: access revoked\n\n")
    target.outcome(
        KLASS,
        "event-stream-after-revoke",
        held=status == 200 and ended,
        accepted=not ended,
        detail=f"{status}, first {first[:40]!r}, tail {tail[-80:]!r}",
    )
    assert status == 200, "the viewer could not open the stream while it had access"
    assert first.startswith(b"data: ") or b"\ndata: " in first
    assert ended, tail[-200:]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused(target: Target, hidden: None, case: Case) -> None:
    if case.id == "event-stream-after-revoke":
        _stream_case(target)
        return
    target.check(KLASS, case)


def test_healthz_stays_open_outside_the_fence(target: Target) -> None:
    """The control: the fence is on, and the load balancer's health check still answers."""
    assert (
        exchange(target.kmsd.port, Req("GET", "/healthz", source=OUTSIDE).render({})).status == 200
    )
