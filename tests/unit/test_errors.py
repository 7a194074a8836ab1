"""The error hierarchy and its problem documents (kmsd.errors)."""

from __future__ import annotations

import pytest

from kmsd import errors
from kmsd.errors import KmsError, ShuttingDown, Unavailable


def _all_subclasses(cls: type[KmsError]) -> list[type[KmsError]]:
    out: list[type[KmsError]] = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


ERROR_CLASSES = [KmsError, *_all_subclasses(KmsError)]

EXPECTED_STATUS = {
    "KmsError": 500,
    "InvalidInput": 400,
    "Unauthenticated": 401,
    "LoginRejected": 401,
    "Forbidden": 403,
    "NotFound": 404,
    "MethodNotAllowed": 405,
    "Conflict": 409,
    "ReportsUnknown": 409,
    "PayloadTooLarge": 413,
    "UnsupportedMediaType": 415,
    "TooManyRequests": 429,
    "UpstreamError": 502,
    "Unavailable": 503,
    "ShuttingDown": 503,
    "FencedOut": 409,
    "WebhooksNotConfigured": 409,
}


def test_hierarchy_is_known() -> None:
    in_module = {c.__name__ for c in ERROR_CLASSES if c.__module__ == errors.__name__}
    assert in_module == set(EXPECTED_STATUS)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_problem_document(cls: type[KmsError]) -> None:
    err = cls("something went wrong at ns/app")
    problem = err.problem()
    assert set(problem) == {"type", "title", "status", "detail"}
    assert problem["type"] == f"https://kmsd.dev/problems/{cls.code}"
    assert problem["title"] == cls.title
    assert problem["title"]
    assert problem["status"] == cls.http_status
    assert problem["detail"] == "something went wrong at ns/app"
    assert str(err) == "something went wrong at ns/app"
    if cls.__name__ in EXPECTED_STATUS:
        assert cls.http_status == EXPECTED_STATUS[cls.__name__]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_extra_fields_are_merged(cls: type[KmsError]) -> None:
    problem = cls("detail", path="ns/app", retry_after=3).problem()
    assert problem["path"] == "ns/app"
    assert problem["retry_after"] == 3
    assert problem["status"] == cls.http_status
    assert problem["detail"] == "detail"


def test_codes_are_unique() -> None:
    codes = [c.code for c in ERROR_CLASSES if c.__module__ == errors.__name__]
    assert len(codes) == len(set(codes))


def test_login_rejected_is_unauthenticated() -> None:
    assert issubclass(errors.LoginRejected, errors.Unauthenticated)
    assert not issubclass(errors.ConfigError, KmsError)


def test_extension_members_never_override_standard_ones() -> None:
    from kmsd.errors import Conflict

    doc = Conflict("taken", status=200, title="fine", type="x", children=2).problem()
    assert (doc["status"], doc["title"], doc["children"]) == (409, "Conflict", 2)
    assert doc["type"].endswith("/conflict")


def test_unavailable_tells_when_to_retry() -> None:
    assert Unavailable("database gone").headers == {"Retry-After": "2"}
    assert ShuttingDown(retry_after=4).headers == {"Retry-After": "4"}
