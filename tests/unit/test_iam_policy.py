"""Generated IAM policies: exact resources, the right conditions, parliament-clean."""

from __future__ import annotations

import gc
import json
import warnings
from typing import Any

import pytest

with warnings.catch_warnings():
    # parliament opens its IAM definitions at import and never closes the file.
    warnings.simplefilter("ignore", ResourceWarning)
    from parliament import analyze_policy_string

    gc.collect()

from kmsd.domain.iam import (
    FORBIDDEN_ACTIONS,
    KeyUse,
    NothingToGrant,
    actions_of,
    app_policy,
    server_policy,
)

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:kmsd/prod/pay/db-AbCdEf"
ARN2 = "arn:aws:secretsmanager:us-east-1:123456789012:secret:kmsd/prod/pay/us/tls-GhIjKl"
SHARED = "arn:aws:secretsmanager:us-east-1:123456789012:secret:kmsd/prod/shop/api-MnOpQr"
KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def lint(policy: dict[str, Any]) -> list[str]:
    """Every parliament finding, whatever its severity (we accept none)."""
    analysed = analyze_policy_string(json.dumps(policy))
    return [f"{f.severity} {f.issue}: {f.detail}" for f in analysed.findings]


def test_app_policy_reads_exactly_its_secrets_by_stage_from_its_networks() -> None:
    policy = app_policy([ARN2, ARN, ARN], source_cidrs=["10.0.0.0/8"])
    (statement,) = policy["Statement"]
    assert statement["Action"] == ["secretsmanager:GetSecretValue"]
    assert statement["Resource"] == [ARN, ARN2]
    assert statement["Condition"] == {
        "ForAnyValue:StringEquals": {
            "secretsmanager:VersionStage": ["AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"]
        },
        "IpAddress": {"aws:SourceIp": ["10.0.0.0/8"]},
    }
    assert lint(policy) == []


def test_app_policy_with_data_keys() -> None:
    policy = app_policy(
        [ARN], labels=["AWSCURRENT"], keys=[KeyUse(KEY, (("kmsd:path", "prod/pay"),))]
    )
    decrypt = policy["Statement"][1]
    assert decrypt["Action"] == ["kms:Decrypt"]
    assert decrypt["Condition"] == {"StringEquals": {"kms:EncryptionContext:kmsd:path": "prod/pay"}}
    assert lint(policy) == []


def test_exact_shape_with_nothing_to_read_is_refused_not_empty() -> None:
    with pytest.raises(NothingToGrant) as refused:
        app_policy([])
    assert refused.value.http_status == 409
    assert "shape=prefix" in refused.value.detail


@pytest.mark.parametrize(
    ("shared", "keys"),
    [([SHARED], []), ([], [KeyUse(KEY, (("kmsd:name", "k"), ("kmsd:path", "prod/pay")))])],
    ids=["only-a-share", "only-a-data-key"],
)
def test_exact_shape_with_only_a_share_or_a_data_key_is_valid(
    shared: list[str], keys: list[KeyUse]
) -> None:
    policy = app_policy([], shared_arns=shared, keys=keys)
    assert len(policy["Statement"]) == 1
    assert lint(policy) == []


@pytest.mark.parametrize("partition", ["aws", "aws-cn"])
def test_server_policy_writes_and_never_reads(partition: str) -> None:
    policy = server_policy(
        partition=partition, region="us-east-1", account="123456789012", sm_prefix="kmsd/"
    )
    assert not actions_of(policy) & FORBIDDEN_ACTIONS
    assert "secretsmanager:PutSecretValue" in actions_of(policy)
    assert "kms:GenerateDataKeyWithoutPlaintext" in actions_of(policy)
    # CreateSecret with Tags needs it, and so does the backfill of older secrets' tags.
    assert "secretsmanager:TagResource" in actions_of(policy)
    assert policy["Statement"][0]["Resource"] == [
        f"arn:{partition}:secretsmanager:us-east-1:123456789012:secret:kmsd/*"
    ]
    if partition == "aws":
        assert lint(policy) == []


def test_server_policy_may_mac_with_the_webhook_key_only() -> None:
    policy = server_policy(
        partition="aws",
        region="us-east-1",
        account="123456789012",
        sm_prefix="kmsd/",
        webhook_mac_key_arn=KEY,
    )
    (mac,) = [s for s in policy["Statement"] if "kms:GenerateMac" in s["Action"]]
    assert (mac["Action"], mac["Resource"]) == (["kms:GenerateMac"], [KEY])
    assert not actions_of(policy) & FORBIDDEN_ACTIONS
    assert lint(policy) == []


def test_server_policy_without_webhooks_has_no_mac() -> None:
    policy = server_policy(
        partition="aws", region="us-east-1", account="123456789012", sm_prefix="kmsd/"
    )
    assert "kms:GenerateMac" not in actions_of(policy)
