"""IAM policies through HTTP, from the real tree: both shapes, and their drift."""

from __future__ import annotations

import gc
import json
import warnings
from fnmatch import fnmatchcase
from typing import Any

import boto3

from kmsd.config import Settings
from tests.conftest import REGION, Identity
from tests.integration.conftest import Api

with warnings.catch_warnings():
    warnings.simplefilter("ignore", ResourceWarning)
    from parliament import analyze_policy_string

    gc.collect()


async def test_app_policy_covers_the_chain_and_subtree_only(
    api: Api, reader_api: Api, reader: Identity
) -> None:
    for path in ("prod/pay/us/blue", "prod/pay/eu", "prod/shop"):
        await api.ok("PUT", f"/v1/nodes/{path}?parents=true")
    app = await api.put_json("prod/pay/db", {"a": "1"})
    region = await api.put_json("prod/pay/us/db", {"a": "2"})
    cluster = await api.put_json("prod/pay/us/blue/tls", {"a": "3"})
    await api.put_json("prod/pay/eu/db", {"a": "4"})  # a sibling region: not for us hosts
    await api.put_json("prod/shop/db", {"a": "5"})  # another application
    policy = await api.ok(
        "GET", "/v1/iam-policy/app/prod/pay/us?source_cidr=10.1.0.0/16&shape=exact"
    )
    (statement,) = policy["Statement"]
    assert statement["Resource"] == sorted([app["sm_arn"], region["sm_arn"], cluster["sm_arn"]])
    assert statement["Condition"]["IpAddress"] == {"aws:SourceIp": ["10.1.0.0/16"]}
    assert analyze_policy_string(json.dumps(policy)).findings == []
    # The whole application: every secret of prod/pay, none of prod/shop.
    whole = await api.ok("GET", "/v1/iam-policy/app/prod/pay?shape=exact")
    assert len(whole["Statement"][0]["Resource"]) == 4
    assert (await reader_api.call("GET", "/v1/iam-policy/app/prod/pay"))[0] == 403
    await api.grant(reader.arn, "prod/pay", "view")
    assert (await reader_api.call("GET", "/v1/iam-policy/app/prod/pay"))[0] == 200
    assert (await api.call("GET", "/v1/iam-policy/app/prod/pay?source_cidr=nope"))[0] == 400


async def test_server_policy_never_reads(api: Api) -> None:
    policy = await api.ok("GET", "/v1/iam-policy/server")
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert not {a for a in actions if a.startswith("secretsmanager:Get")}
    assert "kms:Decrypt" not in actions
    assert not [a for a in actions if a.endswith("*")]
    assert analyze_policy_string(json.dumps(policy)).findings == []
    assert policy["Statement"][0]["Resource"][0].startswith(
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:kmsd-"
    )


async def test_server_policy_may_derive_webhook_keys_with_the_configured_key_only(
    api: Api, moto_endpoint: str, webhook_mac_key: str
) -> None:
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name=REGION)
    arn = kms.describe_key(KeyId=webhook_mac_key)["KeyMetadata"]["Arn"]
    policy = await api.ok("GET", "/v1/iam-policy/server")
    (mac,) = [s for s in policy["Statement"] if "kms:GenerateMac" in s["Action"]]
    assert (mac["Action"], mac["Resource"]) == (["kms:GenerateMac"], [arn])  # the alias resolved
    assert analyze_policy_string(json.dumps(policy)).findings == []


def lint(policy: dict[str, Any]) -> list[str]:
    return [f"{f.issue}: {f.detail}" for f in analyze_policy_string(json.dumps(policy)).findings]


def prefix_of(settings: Settings, app: str) -> str:
    return f"arn:aws:secretsmanager:{REGION}:123456789012:secret:{settings.sm_prefix}{app}/*"


async def test_the_default_prefix_shape_covers_secrets_made_later(
    api: Api, settings: Settings, sm_client: Any
) -> None:
    await api.ok("PUT", "/v1/nodes/prod/pay/us?parents=true")
    before = await api.ok("GET", "/v1/iam-policy/app/prod/pay/us")
    db = await api.put_json("prod/pay/us/db", {"a": "1"})
    after = await api.ok("GET", "/v1/iam-policy/app/prod/pay/us")
    assert before == after  # nothing to apply again
    (statement,) = after["Statement"]
    assert statement["Resource"] == [prefix_of(settings, "prod/pay")]
    assert statement["Condition"]["StringEquals"] == {
        "secretsmanager:ResourceTag/kmsd:app": "prod/pay"
    }
    assert statement["Condition"]["StringLike"] == {
        "secretsmanager:ResourceTag/kmsd:path": ["prod/pay", "prod/pay/us", "prod/pay/us/*"]
    }
    assert lint(after) == []
    # The secret kmsd made carries what the conditions read, under the resource pattern.
    desc = sm_client.describe_secret(SecretId=db["sm_arn"])
    tags = {t["Key"]: t["Value"] for t in desc["Tags"]}
    assert tags == {"kmsd:app": "prod/pay", "kmsd:path": "prod/pay/us", "kmsd:name": "db"}
    assert fnmatchcase(desc["ARN"], statement["Resource"][0])


async def test_an_application_with_no_secrets_gets_a_valid_prefix_policy_and_an_exact_409(
    api: Api,
) -> None:
    await api.ok("PUT", "/v1/nodes/prod/empty?parents=true")
    policy = await api.ok("GET", "/v1/iam-policy/app/prod/empty")
    assert len(policy["Statement"]) == 1
    assert lint(policy) == []
    status, problem = await api.call("GET", "/v1/iam-policy/app/prod/empty?shape=exact")
    assert status == 409
    assert problem["type"] == "https://kmsd.dev/problems/nothing-to-grant"
    assert "shape=prefix" in problem["detail"]
    # The refusal is not recorded as a fetch: the prefix one still is.
    assert (await api.ok("GET", "/v1/iam-policy/drift/prod/empty"))["shape"] == "prefix"
    assert (await api.call("GET", "/v1/iam-policy/app/prod/empty?shape=wide"))[0] == 400


async def test_shares_and_data_keys_in_both_shapes(api: Api, moto_endpoint: str) -> None:
    for path in ("prod/pay/us", "prod/shop"):
        await api.ok("PUT", f"/v1/nodes/{path}?parents=true")
    own = await api.put_json("prod/pay/db", {"a": "1"})
    shop = await api.put_json("prod/shop/api", {"a": "2"})
    await api.ok("POST", "/v1/shares", json={"secret": "prod/shop/api", "to": "prod/pay"})
    await api.ok("PUT", "/v1/refs/prod/pay/us/shop-api", json={"target": "prod/shop/api"})
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name=REGION)
    cmk = kms.create_key()["KeyMetadata"]["Arn"]
    await api.ok("POST", "/v1/datakeys/prod/pay/files", json={"cmk": cmk})
    for shape in ("prefix", "exact"):
        policy = await api.ok("GET", f"/v1/iam-policy/app/prod/pay/us?shape={shape}")
        by_sid = {s["Sid"]: s for s in policy["Statement"]}
        assert by_sid["ReadSharedSecretsCurrentOnly"]["Resource"] == [shop["sm_arn"]]
        assert by_sid["DecryptDataKeys0"]["Resource"] == [cmk]
        assert by_sid["DecryptDataKeys0"]["Condition"] == {
            "StringEquals": {
                "kms:EncryptionContext:kmsd:name": "files",
                "kms:EncryptionContext:kmsd:path": "prod/pay",
            }
        }
        assert lint(policy) == [], shape
    assert by_sid["ReadOwnSecretsByStage"]["Resource"] == [own["sm_arn"]]  # the exact one


async def test_drift_of_the_prefix_shape_is_only_what_lies_outside_it(api: Api) -> None:
    for path in ("prod/pay/us", "prod/pay/eu", "prod/shop"):
        await api.ok("PUT", f"/v1/nodes/{path}?parents=true")
    never = await api.ok("GET", "/v1/iam-policy/drift/prod/pay/us")
    assert never == {
        "path": "prod/pay/us",
        "fetched_at": None,
        "shape": None,
        "source_cidrs": [],
        "added_since": [],
        "uncovered": [],
        "needs_reapply": True,
    }
    await api.ok("GET", "/v1/iam-policy/app/prod/pay/us?source_cidr=10.0.0.0/8")
    await api.put_json("prod/pay/us/db", {"a": "1"})
    await api.put_json("prod/pay/cfg", {"a": "2"})
    await api.put_json("prod/pay/eu/db", {"a": "3"})  # a sibling region: not for us hosts
    drift = await api.ok("GET", "/v1/iam-policy/drift/prod/pay/us")
    assert drift["shape"] == "prefix"
    assert drift["source_cidrs"] == ["10.0.0.0/8"]
    assert drift["added_since"] == ["prod/pay/us/db", "prod/pay/cfg"]
    assert (drift["needs_reapply"], drift["uncovered"]) == (False, [])
    # A share is outside the application's prefix: its ARN must be applied.
    shop = await api.put_json("prod/shop/api", {"a": "4"})
    await api.ok("POST", "/v1/shares", json={"secret": "prod/shop/api", "to": "prod/pay"})
    await api.ok("PUT", "/v1/refs/prod/pay/shop-api", json={"target": "prod/shop/api"})
    drift = await api.ok("GET", "/v1/iam-policy/drift/prod/pay/us")
    assert drift["added_since"][-1] == "prod/pay/shop-api"
    assert (drift["needs_reapply"], drift["uncovered"]) == (True, [shop["sm_arn"]])
    # Fetched again (with the same networks): nothing added since, nothing lacking.
    await api.ok("GET", "/v1/iam-policy/app/prod/pay/us?source_cidr=10.0.0.0/8")
    drift = await api.ok("GET", "/v1/iam-policy/drift/prod/pay/us")
    assert (drift["added_since"], drift["needs_reapply"]) == ([], False)


async def test_drift_of_the_exact_shape_is_every_new_secret(
    api: Api, reader_api: Api, reader: Identity
) -> None:
    await api.ok("PUT", "/v1/nodes/prod/pay/us?parents=true")
    await api.put_json("prod/pay/db", {"a": "1"})
    await api.ok("GET", "/v1/iam-policy/app/prod/pay?shape=exact")
    assert (await api.ok("GET", "/v1/iam-policy/drift/prod/pay"))["needs_reapply"] is False
    tls = await api.put_json("prod/pay/us/tls", {"a": "2"})
    drift = await api.ok("GET", "/v1/iam-policy/drift/prod/pay")
    assert drift["shape"] == "exact"
    assert drift["added_since"] == ["prod/pay/us/tls"]
    assert (drift["needs_reapply"], drift["uncovered"]) == (True, [tls["sm_arn"]])
    # Removing every secret leaves nothing lacking (and no 409 from the exact shape).
    await api.ok("DELETE", "/v1/secrets/prod/pay/us/tls")
    await api.ok("DELETE", "/v1/secrets/prod/pay/db")
    drift = await api.ok("GET", "/v1/iam-policy/drift/prod/pay")
    assert (drift["added_since"], drift["needs_reapply"]) == ([], False)
    assert (await reader_api.call("GET", "/v1/iam-policy/drift/prod/pay"))[0] == 403
    await api.grant(reader.arn, "prod/pay", "view")
    assert (await reader_api.call("GET", "/v1/iam-policy/drift/prod/pay"))[0] == 200
    assert (await api.call("GET", "/v1/iam-policy/drift/prod/nope"))[0] == 404
    assert (await api.call("GET", "/v1/iam-policy/drift/prod"))[0] == 400
