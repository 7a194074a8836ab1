"""SM-shaped answers from the agent's cache: which secret an id names, which version, the JSON."""

from __future__ import annotations

import pytest

from kmsagent.compat import (
    BadRequest,
    Query,
    SmError,
    batch_ids,
    describe,
    find,
    list_versions,
    parse_get,
    parse_sdk,
    pick,
    secret_id_of,
    secret_value,
    sm_name,
)
from kmsagent.state import PathView, Secret, Version

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:kmsd/prod/pay/db-AbCdEf"
OTHER = "arn:aws:secretsmanager:us-east-1:123456789012:secret:kmsd/prod/pay/eu/db-XyZ123"
T = "2025-01-02T03:04:05.678000+00:00"


def _secret(arn: str = ARN, *, name: str = "db", kind: str = "json") -> Secret:
    return Secret(
        name=name,
        kind=kind,
        source="prod/pay",
        via=None,
        arn=arn,
        expires_at=None,
        versions=(
            Version("v-cur", "current", '{"password": "p2"}', T),
            Version("v-pend", "pending", '{"password": "p3"}', T),
            Version("v-prev", "previous", '{"password": "p1"}', None),
        ),
    )


def _view(path: str, *secrets: Secret) -> PathView:
    return PathView(path=path, path_version=7, hash="h", secrets={s.name: s for s in secrets})


VIEWS = {"prod/pay": _view("prod/pay", _secret(), _secret(name="tls", kind="binary"))}


def test_sm_name_drops_the_arn_suffix() -> None:
    assert sm_name(ARN) == "kmsd/prod/pay/db"
    assert sm_name("arn:aws:secretsmanager:us-east-1:1:secret:plain") == "plain"


@pytest.mark.parametrize("secret_id", ["db", ARN, "kmsd/prod/pay/db", "prod/pay/db"])
def test_a_secret_is_found_by_name_arn_sm_name_or_path(secret_id: str) -> None:
    view, secret = find(VIEWS, secret_id)
    assert (view.path, secret.arn) == ("prod/pay", ARN)


@pytest.mark.parametrize(
    "secret_id",
    ["nope", "arn:aws:secretsmanager:us-east-1:123456789012:secret:kmsd/prod/other/db-AbCdEf"],
)
def test_what_the_agent_does_not_serve_is_not_found_as_sm_says(secret_id: str) -> None:
    with pytest.raises(SmError) as caught:
        find(VIEWS, secret_id)
    assert (caught.value.status, caught.value.code) == (400, "ResourceNotFoundException")
    assert caught.value.body()["message"] == "Secrets Manager can't find the specified secret."


def test_data_keys_are_not_sm_secrets() -> None:
    views = {"prod/pay": _view("prod/pay", _secret(name="files", kind="datakey"))}
    with pytest.raises(SmError):
        find(views, "files")


def test_a_name_on_two_paths_must_be_qualified() -> None:
    views = {**VIEWS, "prod/pay/eu": _view("prod/pay/eu", _secret(OTHER))}
    with pytest.raises(SmError) as caught:
        find(views, "db")
    assert caught.value.code == "InvalidParameterException"
    assert find(views, "prod/pay/eu/db")[1].arn == OTHER
    assert find(views, OTHER)[1].arn == OTHER


@pytest.mark.parametrize(
    ("version_id", "label", "want"),
    [
        (None, None, "v-cur"),
        (None, "AWSCURRENT", "v-cur"),
        (None, "AWSPENDING", "v-pend"),
        (None, "AWSPREVIOUS", "v-prev"),
        ("v-pend", None, "v-pend"),
        ("v-pend", "AWSPENDING", "v-pend"),
    ],
)
def test_versions_by_id_and_label(version_id: str | None, label: str | None, want: str) -> None:
    assert pick(_secret(), version_id, label).version_id == want


@pytest.mark.parametrize(
    ("version_id", "label"),
    [("v-pend", "AWSCURRENT"), ("v-none", None), (None, "KMSD_REVOKED"), (None, "awscurrent")],
)
def test_a_version_not_served_is_not_found(version_id: str | None, label: str | None) -> None:
    with pytest.raises(SmError) as caught:
        pick(_secret(), version_id, label)
    assert caught.value.code == "ResourceNotFoundException"


def test_a_referencer_sees_no_pending_version() -> None:
    only_current = Secret("db", "json", "prod/pay", "prod/b", ARN, None, (_secret().versions[0],))
    with pytest.raises(SmError):
        pick(only_current, None, "AWSPENDING")


def test_get_secret_value_shapes() -> None:
    secret = _secret()
    doc = secret_value(secret, secret.versions[0], dates_as_text=True)
    assert doc == {
        "ARN": ARN,
        "Name": "kmsd/prod/pay/db",
        "VersionId": "v-cur",
        "VersionStages": ["AWSCURRENT"],
        "SecretString": '{"password": "p2"}',
        "CreatedDate": "1735787045.678",
    }
    assert secret_value(secret, secret.versions[0], dates_as_text=False)["CreatedDate"] == (
        1735787045.678
    )
    binary = Secret("tls", "binary", "prod/pay", None, ARN, None, (Version("b", "current", b"\0"),))
    doc = secret_value(binary, binary.versions[0], dates_as_text=False)
    assert (doc["SecretBinary"], "SecretString" in doc, "CreatedDate" in doc) == (
        "AA==",
        False,
        False,
    )


def test_describe_and_list_name_every_served_version() -> None:
    assert describe(_secret())["VersionIdsToStages"] == {
        "v-cur": ["AWSCURRENT"],
        "v-pend": ["AWSPENDING"],
        "v-prev": ["AWSPREVIOUS"],
    }
    listed = list_versions(_secret())["Versions"]
    assert [(v["VersionId"], "CreatedDate" in v) for v in listed] == [
        ("v-cur", True),
        ("v-pend", True),
        ("v-prev", False),
    ]


@pytest.mark.parametrize(
    ("pairs", "path_id", "want"),
    [
        ([("secretId", "db")], None, Query("db")),
        ([("secretId", "db"), ("refreshNow", "TRUE")], None, Query("db", refresh_now=True)),
        ([("secretId", "db"), ("refreshNow", "0")], None, Query("db")),
        ([("versionStage", "AWSPENDING")], "db", Query("db", version_stage="AWSPENDING")),
        ([("versionId", "v1")], "a/b", Query("a/b", version_id="v1")),
    ],
)
def test_agent_queries(pairs: list[tuple[str, str]], path_id: str | None, want: Query) -> None:
    assert parse_get(pairs, path_id=path_id) == want


@pytest.mark.parametrize(
    ("pairs", "path_id", "message"),
    [
        ([], None, "missing parameter secretId"),
        ([("secretId", "")], None, "missing parameter secretId"),
        ([("secretId", "db"), ("ttl", "1")], None, "unknown parameter: ttl"),
        ([("secretId", "db")], "db", "unknown parameter: secretId"),
        ([("secretId", "db"), ("refreshNow", "yes")], None, "invalid refreshNow value"),
        ([("secretId", "a"), ("secretId", "b")], None, "repeated parameter: secretId"),
    ],
)
def test_agent_queries_refused_in_plain_text(
    pairs: list[tuple[str, str]], path_id: str | None, message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_get(pairs, path_id=path_id)


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {},
        {"SecretId": ""},
        {"SecretId": 1},
        {"SecretId": "db", "VersionId": 2},
        {"SecretId": "db", "Extra": 1},
    ],
)
def test_sdk_bodies_refused(doc: object) -> None:
    with pytest.raises(SmError) as caught:
        parse_sdk(doc)
    assert caught.value.code == "InvalidParameterException"


def test_sdk_bodies() -> None:
    assert parse_sdk({"SecretId": "db", "VersionStage": "AWSPENDING"}) == Query(
        "db", version_stage="AWSPENDING"
    )
    assert secret_id_of({"SecretId": "db", "IncludeDeprecated": True}) == "db"
    assert batch_ids({"SecretIdList": ["a", "b"]}) == ["a", "b"]
    for bad in ({"Filters": []}, {"SecretIdList": []}, {"SecretIdList": ["a"] * 21}, {}):
        with pytest.raises(SmError):
            batch_ids(bad)
