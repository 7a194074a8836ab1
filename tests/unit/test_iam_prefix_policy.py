"""The prefix-shaped host policy: it covers an application's later secrets, stays in its scope,
lists what lies outside exactly, is parliament-clean, and its drift is what it lacks."""

from __future__ import annotations

import gc
import json
import warnings
from fnmatch import fnmatchcase
from typing import Any

import pytest

with warnings.catch_warnings():
    # parliament opens its IAM definitions at import and never closes the file.
    warnings.simplefilter("ignore", ResourceWarning)
    from parliament import analyze_policy_string

    gc.collect()

from kmsd.domain.iam import (
    KeyUse,
    Shared,
    app_policy,
    in_scope,
    prefix_policy,
    sm_tags,
    uncovered,
)
from kmsd.domain.names import NodePath
from kmsd.services.writes import sm_name_for

ACCOUNT = "123456789012"
SM = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:"
KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
SHOP_API = f"{SM}kmsd/prod/shop/api-MnOpQr"  # another application's, shared with pay
PAY_EU_DB = f"{SM}kmsd/prod/pay/eu/db-StUvWx"  # pay's own, in a sibling region of prod/pay/us


def policy(path: str, **kw: Any) -> dict[str, Any]:
    return prefix_policy(
        NodePath.parse(path),
        partition="aws",
        region="us-east-1",
        account=ACCOUNT,
        sm_prefix="kmsd/",
        **kw,
    )


def lint(doc: dict[str, Any]) -> list[str]:
    analysed = analyze_policy_string(json.dumps(doc))
    return [f"{f.severity} {f.issue}: {f.detail}" for f in analysed.findings]


def allows(doc: dict[str, Any], arn: str, tags: dict[str, str]) -> bool:
    """Whether the policy's own-secrets statement reads ``arn`` carrying ``tags``.

    Only the operators these policies use: StringEquals and StringLike on resource tags (IAM
    wildcards match across '/', as fnmatch's '*' does), the stage and network conditions aside.
    """
    statement = doc["Statement"][0]
    if not any(fnmatchcase(arn, r) for r in statement["Resource"]):
        return False
    for op, match in (("StringEquals", str.__eq__), ("StringLike", fnmatchcase)):
        for key, wanted in statement["Condition"].get(op, {}).items():
            have = tags.get(key.removeprefix("secretsmanager:ResourceTag/"))
            values = wanted if isinstance(wanted, list) else [wanted]
            if have is None or not any(match(have, v) for v in values):
                return False
    return True


SHAPES = {
    "app, no secrets yet": ("prod/pay", {}),
    "app, with cidrs": ("prod/pay", {"source_cidrs": ["10.0.0.0/8", "192.168.1.0/24"]}),
    "cluster": ("prod/pay/us/blue", {}),
    "app, a share": ("prod/pay", {"shared": [Shared(SHOP_API, "prod/shop")]}),
    "region, shares in and out of scope": (
        "prod/pay/us",
        {"shared": [Shared(SHOP_API, "prod/shop"), Shared(PAY_EU_DB, "prod/pay/eu")]},
    ),
    "data keys": (
        "prod/pay/us",
        {
            "keys": [
                KeyUse(KEY, (("kmsd:name", "k1"), ("kmsd:path", "prod/pay"))),
                KeyUse(KEY, (("kmsd:name", "k2"), ("kmsd:path", "prod/pay/us"))),
            ],
            "source_cidrs": ["10.0.0.0/8"],
        },
    ),
}


@pytest.mark.parametrize(("path", "kw"), SHAPES.values(), ids=SHAPES.keys())
def test_every_prefix_policy_is_valid_and_parliament_clean(path: str, kw: dict[str, Any]) -> None:
    doc = policy(path, **kw)
    assert doc["Statement"]  # IAM refuses an empty list; parliament does not notice
    assert all(s["Action"] and s["Resource"] for s in doc["Statement"])
    assert lint(doc) == []


def test_the_application_reads_its_prefix_with_its_tag_and_stages() -> None:
    doc = policy("prod/pay", source_cidrs=["10.0.0.0/8"])
    (statement,) = doc["Statement"]
    assert statement["Action"] == ["secretsmanager:GetSecretValue"]
    assert statement["Resource"] == [f"{SM}kmsd/prod/pay/*"]
    assert statement["Condition"] == {
        "ForAnyValue:StringEquals": {
            "secretsmanager:VersionStage": ["AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"]
        },
        "StringEquals": {"secretsmanager:ResourceTag/kmsd:app": "prod/pay"},
        "IpAddress": {"aws:SourceIp": ["10.0.0.0/8"]},
    }


def test_below_the_application_the_path_tag_keeps_to_chain_and_subtree() -> None:
    (statement,) = policy("prod/pay/us")["Statement"]
    assert statement["Condition"]["StringLike"] == {
        "secretsmanager:ResourceTag/kmsd:path": ["prod/pay", "prod/pay/us", "prod/pay/us/*"]
    }


# (policy path, node of a secret, whether the policy's hosts read it)
SCOPE = [
    ("prod/pay", "prod/pay", True),
    ("prod/pay", "prod/pay/us/blue", True),
    ("prod/pay", "prod/payments", False),  # a name that starts the same: another application
    ("prod/pay", "prod/shop", False),
    ("prod/pay", "dev/pay", False),
    ("prod/pay/us", "prod/pay", True),
    ("prod/pay/us", "prod/pay/us", True),
    ("prod/pay/us", "prod/pay/us/blue/z1", True),
    ("prod/pay/us", "prod/pay/eu", False),  # a sibling region
    ("prod/pay/us", "prod/pay/usx", False),  # a sibling whose name starts the same
    ("prod/pay/us/blue", "prod/pay/us", True),
    ("prod/pay/us/blue", "prod/pay/us/green", False),
]


@pytest.mark.parametrize(("path", "node", "reads"), SCOPE)
def test_the_prefix_and_tags_cover_exactly_the_scope_for_any_later_secret(
    path: str, node: str, reads: bool
) -> None:
    doc = policy(path)
    for name in ("db", "a-later-one", "x.y_z"):
        sm_name = sm_name_for("kmsd/", NodePath.parse(node), name)
        arn = f"{SM}{sm_name}-AbCdEf"  # SM appends six random characters
        assert allows(doc, arn, sm_tags(NodePath.parse(node), name)) is reads, (node, name)
    assert in_scope(NodePath.parse(path), node) is reads


def test_a_secret_under_the_prefix_without_kmsd_tags_is_not_read() -> None:
    doc = policy("prod/pay")
    assert not allows(doc, f"{SM}kmsd/prod/pay/planted-AbCdEf", {})
    assert not allows(doc, f"{SM}kmsd/prod/pay/db-AbCdEf", {"kmsd:app": "prod/shop"})


def test_shares_outside_the_scope_are_listed_exactly_and_current_only() -> None:
    doc = policy(
        "prod/pay/us",
        shared=[
            Shared(SHOP_API, "prod/shop"),
            Shared(PAY_EU_DB, "prod/pay/eu"),  # same application, outside this path's scope
            Shared(f"{SM}kmsd/prod/pay/us/tls-AaBbCc", "prod/pay/us"),  # already covered
        ],
    )
    own, shared = doc["Statement"]
    assert own["Sid"] == "ReadOwnSecretsByPrefixAndTag"
    assert shared["Resource"] == sorted([PAY_EU_DB, SHOP_API])
    assert shared["Condition"] == {
        "ForAnyValue:StringEquals": {"secretsmanager:VersionStage": ["AWSCURRENT"]}
    }


def test_data_keys_are_the_same_in_both_shapes() -> None:
    keys = [KeyUse(KEY, (("kmsd:name", "k"), ("kmsd:path", "prod/pay")))]
    exact = [s for s in app_policy([], keys=keys)["Statement"] if s["Action"] == ["kms:Decrypt"]]
    prefix = [s for s in policy("prod/pay", keys=keys)["Statement"] if "kms:Decrypt" in s["Action"]]
    assert exact == prefix
    assert prefix[0]["Condition"] == {
        "StringEquals": {
            "kms:EncryptionContext:kmsd:name": "k",
            "kms:EncryptionContext:kmsd:path": "prod/pay",
        }
    }


def test_kmsd_tags_every_secret_with_its_application() -> None:
    assert sm_tags(NodePath.parse("prod/pay/us/blue"), "db") == {
        "kmsd:app": "prod/pay",
        "kmsd:path": "prod/pay/us/blue",
        "kmsd:name": "db",
    }


ARN = f"{SM}kmsd/prod/pay/db-AbCdEf"
NEW = f"{SM}kmsd/prod/pay/us/new-GgHhIi"
KEY2 = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/9999abcd-12ab-34cd-56ef-1234567890ab"
K1 = KeyUse(KEY, (("kmsd:name", "k1"), ("kmsd:path", "prod/pay")))
K2 = KeyUse(KEY2, (("kmsd:name", "k2"), ("kmsd:path", "prod/pay")))
# (what happened since the fetch, policy fetched, policy needed now, what it lacks)
DRIFT = {
    "prefix, a new secret": (policy("prod/pay"), policy("prod/pay"), []),
    "prefix, a new share": (
        policy("prod/pay"),
        policy("prod/pay", shared=[Shared(SHOP_API, "prod/shop")]),
        [SHOP_API],
    ),
    "prefix, a new data key": (
        policy("prod/pay", keys=[K1]),
        policy("prod/pay", keys=[K1, K2]),
        [KEY2],
    ),
    "prefix, a share removed": (
        policy("prod/pay", shared=[Shared(SHOP_API, "prod/shop")]),
        policy("prod/pay"),
        [],
    ),
    "exact, a new secret": (app_policy([ARN]), app_policy([ARN, NEW]), [NEW]),
    "exact, a secret removed": (app_policy([ARN, NEW]), app_policy([ARN]), []),
    "exact, a data key reordered": (
        app_policy([ARN], keys=[K2, K1]),
        app_policy([ARN], keys=[K1, K2]),
        [],
    ),
    "exact, everything removed": (app_policy([ARN]), None, []),
}


@pytest.mark.parametrize(("fetched", "needed", "lacks"), DRIFT.values(), ids=DRIFT.keys())
def test_drift_is_what_the_fetched_policy_lacks(
    fetched: dict[str, Any], needed: dict[str, Any] | None, lacks: list[str]
) -> None:
    assert uncovered(fetched, needed) == lacks


def test_the_same_resource_under_a_narrower_condition_is_lacking() -> None:
    # Fetched when the share was current-only; now pay owns it at that node: all stages.
    shared = {"Version": "2012-10-17", "Statement": app_policy([], shared_arns=[ARN])["Statement"]}
    assert uncovered(shared, app_policy([ARN])) == [ARN]
