"""KMS data keys: ciphertext only, one new key per period, old ones stay listed."""

from __future__ import annotations

import base64
from typing import Any

import boto3
import pytest

from tests.conftest import REGION
from tests.integration.conftest import Api


@pytest.fixture
def kms(moto_endpoint: str) -> Any:
    return boto3.client("kms", endpoint_url=moto_endpoint, region_name=REGION)


async def test_data_keys_decrypt_and_periods_add_versions(api: Api, kms: Any) -> None:
    cmk = kms.create_key(Description="pay data keys")["KeyMetadata"]["Arn"]
    await api.ok("PUT", "/v1/nodes/prod/pay/eu?parents=true")
    first = await api.ok("POST", "/v1/datakeys/prod/pay/files", json={"cmk": cmk})
    assert (first["created"], first["period_days"], first["cmk_arn"]) == (True, 182, cmk)
    second = await api.ok("POST", "/v1/datakeys/prod/pay/files", json={"cmk": cmk})
    assert second["created"] is False
    eff = await api.effective("prod/pay/eu")
    (key,) = eff["secrets"]
    assert (key["kind"], key["cmk_arn"], key["source"]) == ("datakey", cmk, "prod/pay")
    assert key["encryption_context"] == {"kmsd:name": "files", "kmsd:path": "prod/pay"}
    assert [(v["version_id"], v["stage"]) for v in key["versions"]] == [
        (second["version_id"], "current"),
        (first["version_id"], "deprecated"),
    ]
    for version in key["versions"]:  # the test may decrypt; kmsd never can
        plain = kms.decrypt(
            CiphertextBlob=base64.b64decode(version["ciphertext_blob"]),
            EncryptionContext=key["encryption_context"],
        )["Plaintext"]
        assert len(plain) == 32
    policy = await api.ok("GET", "/v1/iam-policy/app/prod/pay")
    (decrypt,) = [s for s in policy["Statement"] if s["Action"] == ["kms:Decrypt"]]
    assert decrypt["Resource"] == [cmk]
    assert decrypt["Condition"]["StringEquals"] == {
        "kms:EncryptionContext:kmsd:name": "files",
        "kms:EncryptionContext:kmsd:path": "prod/pay",
    }


async def test_data_key_refusals(api: Api, kms: Any) -> None:
    cmk = kms.create_key()["KeyMetadata"]["Arn"]
    other = kms.create_key()["KeyMetadata"]["Arn"]
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    await api.put_json("prod/pay/db", {"a": "b"})
    assert (await api.call("POST", "/v1/datakeys/prod/pay/db", json={"cmk": cmk}))[0] == 409
    await api.ok("POST", "/v1/datakeys/prod/pay/files", json={"cmk": cmk})
    status, problem = await api.call("POST", "/v1/datakeys/prod/pay/files", json={"cmk": other})
    assert status == 409
    assert "new CMK" in problem["detail"]
    bad = {"cmk": "alias/does-not-exist"}
    status, problem = await api.call("POST", "/v1/datakeys/prod/pay/x", json=bad)
    assert (status, problem["aws_error"]) == (400, "NotFoundException")
    assert (await api.call("POST", "/v1/datakeys/prod/pay/x", json={"cmk": cmk, "period_days": 0}))[
        0
    ] == 400
    # A value cannot be written over a data key.
    status, _ = await api.call(
        "PUT", "/v1/secrets/prod/pay/files", json={"kind": "json", "value": {"a": "b"}}
    )
    assert status == 409
