"""Class 7, sign-in replay: one signed GetCallerIdentity signs in once, from anywhere.

A captured sign-in body is good for 15 minutes by its X-Amz-Date. kmsd records the SHA-256 of
each signature before forwarding it to STS, so a second use is a 401, whatever its holder
changed that the signature does not cover (unsigned headers, their order or case, the URL's
trailing slash, the form's order) and from whichever address it comes. Each case signs a
fresh body, uses it once (200), then sends the replay; the last case sends six uses at once.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tests.security.conftest import SECOND_CLIENT, Target
from tests.security.signing import headers_of, signed_body, with_headers
from tests.security.wire import Case, Req, exchange

KLASS = "7 sign-in replay"
Body = dict[str, str]


def same(body: Body) -> Body:
    return body


def extra_unsigned_header(body: Body) -> Body:
    return with_headers(body, {**headers_of(body), "X-Replayed-By": ["someone-else"]})


def headers_reordered(body: Body) -> Body:
    return with_headers(body, dict(reversed(headers_of(body).items())))


def header_names_lowercased(body: Body) -> Body:
    return with_headers(body, {k.lower(): v for k, v in headers_of(body).items()})


def header_values_unlisted(body: Body) -> Body:
    return with_headers(body, {k: v[0] for k, v in headers_of(body).items()})


def url_without_slash(body: Body) -> Body:
    url = base64.b64decode(body["iam_request_url"]).decode().rstrip("/")
    return {**body, "iam_request_url": base64.b64encode(url.encode()).decode()}


def form_reordered(body: Body) -> Body:
    form = b"Version=2011-06-15&Action=GetCallerIdentity"
    return {**body, "iam_request_body": base64.b64encode(form).decode()}


def method_lowercased(body: Body) -> Body:
    return {**body, "iam_http_request_method": "post"}


@dataclass(frozen=True)
class Replay:
    id: str
    tamper: Callable[[Body], Body]  # what the holder of the captured body changes
    source: str = "127.0.0.1"
    status: int = 401


CASES = [
    Replay("same-body-same-address", same),
    Replay("same-body-other-address", same, source=SECOND_CLIENT),
    Replay("extra-unsigned-header", extra_unsigned_header, source=SECOND_CLIENT),
    Replay("headers-reordered", headers_reordered),
    Replay("header-names-lowercased", header_names_lowercased),
    Replay("header-values-unlisted", header_values_unlisted),
    Replay("url-without-trailing-slash", url_without_slash),
    Replay("form-reordered", form_reordered),
    Replay("method-lowercased", method_lowercased),
    Replay("six-at-once", same),  # no first use: the six race, one wins
]


def login(body: Body, source: str = "127.0.0.1") -> Req:
    return Req("POST", "/v1/auth/aws/login", body=body, source=source)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused(target: Target, case: Replay) -> None:
    body = signed_body(target.identities["rotator"], target.moto)
    if case.id == "six-at-once":
        _race(target, body)
        return
    first = exchange(target.kmsd.port, login(body).render({}))
    assert first.status == 200, first
    target.tokens[f"signin-{case.id}"] = first.json()["token"]  # a marker like every token
    target.check(KLASS, Case(case.id, login(case.tamper(body), case.source), case.status))


def _race(target: Target, body: Body) -> None:
    sources = ["127.0.0.1", SECOND_CLIENT] * 3
    with ThreadPoolExecutor(len(sources)) as pool:
        answers = list(
            pool.map(lambda s: exchange(target.kmsd.port, login(body, s).render({})), sources)
        )
    statuses = sorted(a.status for a in answers)
    for a in answers:
        if a.status == 200:
            target.tokens[f"signin-race-{len(target.tokens)}"] = a.json()["token"]
    target.outcome(
        KLASS,
        "six-at-once",
        held=statuses == [200, 401, 401, 401, 401, 401],
        accepted=statuses.count(200) > 1,
        detail=f"statuses {statuses}",
    )
    assert statuses == [200, 401, 401, 401, 401, 401]
