"""IAM policies through HTTP, from the real tree."""

from __future__ import annotations

import gc
import json
import warnings

import boto3

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
    policy = await api.ok("GET", "/v1/iam-policy/app/prod/pay/us?source_cidr=10.1.0.0/16")
    (statement,) = policy["Statement"]
    assert statement["Resource"] == sorted([app["sm_arn"], region["sm_arn"], cluster["sm_arn"]])
    assert statement["Condition"]["IpAddress"] == {"aws:SourceIp": ["10.1.0.0/16"]}
    assert analyze_policy_string(json.dumps(policy)).findings == []
    # The whole application: every secret of prod/pay, none of prod/shop.
    whole = await api.ok("GET", "/v1/iam-policy/app/prod/pay")
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
