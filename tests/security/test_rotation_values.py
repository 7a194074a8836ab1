"""Class 6, a rotation that writes a value: rotate alone is not edit, and SM's limit holds.

A rotation to a value the caller chose is a write by another door: it needs edit as well as
rotate (rotate alone rotates to values kmsd generates), and the value has Secrets Manager's
64 KiB limit (413), checked before anything is written. Each case rotates a secret of its own,
so one that got through cannot change what the next one meets; after each refusal the secret
still has its one version and no rotation.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any, cast

import pytest

from tests.security.conftest import APP, Target, cases_in
from tests.security.wire import Case, Req

KLASS = "6 rotation values"
BIG = "x" * 70_000  # past SM's 65,536 bytes
PADDING = b" " * (2 << 20)  # JSON allows any whitespace before a document


def rotate(case_id: str, who: str, status: int, **body: Any) -> Case:
    """A case rotating a secret of its own, named after the case (binary when given base64)."""
    req = Req(
        "POST",
        "/v1/rotations",
        headers=[("Authorization", f"Bearer {{{who}}}")],
        body={"path": APP, "name": case_id, **body},
    )
    return Case(case_id, req, status)


def padded(case_id: str, who: str, status: int, **body: Any) -> Case:
    """``rotate``, its JSON document behind 2 MiB of whitespace (valid JSON, past the limit)."""
    case = rotate(case_id, who, status, **body)
    req = cast(Req, case.request)
    doc = json.dumps(req.body).encode()
    headers = [*req.headers, ("Content-Type", "application/json")]
    return Case(case_id, Req("POST", req.target, headers=headers, body=PADDING + doc), status)


def b64(size: int) -> str:
    return base64.b64encode(b"\x00" * size).decode()


CASES = [
    # rotate, but not edit: no value of the caller's choosing
    rotate("rotator-json-value", "rotator", 403, value={"p": "{canary}"}),
    rotate("rotator-b64-value", "rotator", 403, value_b64="c2VjcmV0"),
    rotate("rotator-value-and-leaked", "rotator", 403, value={"p": "{canary}"}, leaked=True),
    rotate("rotator-empty-value", "rotator", 403, value={}),
    rotate("reader-generate", "victim", 403, generate=True),
    # past SM's limit, even with every permission
    rotate("json-over-64k", "api", 413, value={"p": BIG}),
    rotate("b64-over-64k", "api", 413, value_b64=b64(65_537)),
    rotate("b64-far-over-64k", "api", 413, value_b64=b64(600_000)),
    rotate("body-over-1-mib", "api", 413, value={"p": "x" * 1_100_000}),
    padded("body-padded-past-1-mib", "api", 413, value={"p": "{canary}"}),
    # both at once: the size is checked first (either refusal writes nothing)
    rotate("rotator-over-64k", "rotator", 413, value={"p": BIG}),
    rotate("rotator-b64-over-64k", "rotator", 413, value_b64=b64(65_537)),
]


def secret_of(case: Case) -> tuple[str, str]:
    """The secret a case rotates, and its kind."""
    body = cast(Req, case.request).body
    if isinstance(body, bytes):  # padded: the document is at the end
        body = json.loads(body)
    assert isinstance(body, Mapping)
    return str(body["name"]), "binary" if "value_b64" in body else "json"


@pytest.fixture(scope="module")
def secrets(target: Target) -> None:
    for case in cases_in(CASES):
        name, kind = secret_of(case)
        first = {"value": {"p": "first"}} if kind == "json" else {"value_b64": "Zmlyc3Q="}
        target.call("PUT", f"/v1/secrets/{APP}/{name}", {"kind": kind, **first})


def left_behind(target: Target, name: str) -> list[str]:
    versions = target.call("GET", f"/v1/secrets/{APP}/{name}")["versions"]
    rotations = target.call("GET", f"/v1/rotations?path={APP}")["rotations"]
    return [f"{len(versions)} versions"] * (len(versions) != 1) + [
        f"rotation {r['id']}" for r in rotations if r["name"] == name
    ]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused(target: Target, secrets: None, case: Case) -> None:
    name, _ = secret_of(case)
    target.check(KLASS, case, after=lambda: left_behind(target, name))
