"""kmsagent end to end: kmsd, the real PostgreSQL, moto's server and the agent as a subprocess.

Each bootstrap mode signs in with the host's credentials and serves values; changes arrive
without a restart; kmsd outages are survived; the local API's fences hold.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import REGION, Identity
from tests.e2e.harness import (
    DEADLINE_S,
    AgentProcess,
    IMDSv2,
    Replica,
    run_kmsctl,
    wait_until,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def kmsd(env: dict[str, str], tmp_path: Path) -> Iterator[Replica]:
    replica = Replica(env, tmp_path)
    try:
        yield replica
    finally:
        replica.stop()


class Ops:
    """An operator at a terminal: kmsctl against one kmsd."""

    def __init__(self, kmsd: Replica, admin: Identity, moto_endpoint: str) -> None:
        self.kmsd, self.admin, self.moto = kmsd, admin, moto_endpoint

    def __call__(self, *args: str) -> str:
        return run_kmsctl(self.kmsd.addr, self.admin, self.moto, *args)

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--output", "json"))

    def put(self, path: str, name: str, value: dict[str, Any]) -> str:
        doc = self.json("secret", "put", path, name, "--json", json.dumps(value))
        return str(doc["version_id"])


@pytest.fixture
def ops(kmsd: Replica, admin: Identity, moto_endpoint: str) -> Ops:
    return Ops(kmsd, admin, moto_endpoint)


def role(moto_endpoint: str, name: str) -> str:
    """An IAM role in moto (its ARN); hosts of an application act as it."""
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name=REGION)
    try:
        return str(iam.get_role(RoleName=name)["Role"]["Arn"])
    except iam.exceptions.NoSuchEntityException:
        return str(iam.create_role(RoleName=name, AssumeRolePolicyDocument="{}")["Role"]["Arn"])


def assume(moto_endpoint: str, role_arn: str, session: str) -> dict[str, Any]:
    sts = boto3.client("sts", endpoint_url=moto_endpoint, region_name=REGION)
    creds: dict[str, Any] = sts.assume_role(RoleArn=role_arn, RoleSessionName=session)[
        "Credentials"
    ]
    return creds


def shop(ops: Ops, moto_endpoint: str, role_name: str = "shop-host") -> tuple[str, str]:
    """prod/shop with a secret ``db``, its hosts' role bound to it; (role ARN, version id)."""
    ops("node", "create", "prod/shop", "--parents")
    version = ops.put("prod/shop", "db", {"user": "shop", "password": "first"})
    arn = role(moto_endpoint, role_name)
    ops("app", "bind", "prod/shop", "--role", arn)
    return arn, version


@pytest.fixture
def imds(moto_endpoint: str) -> Iterator[IMDSv2]:
    creds = assume(moto_endpoint, role(moto_endpoint, "shop-host"), "i-0abc123def4567890")
    server = IMDSv2(
        "i-0abc123def4567890",
        "shop-host",
        {
            "Code": "Success",
            "LastUpdated": datetime.now(UTC).isoformat(),
            "Type": "AWS-HMAC",
            "AccessKeyId": creds["AccessKeyId"],
            "SecretAccessKey": creds["SecretAccessKey"],
            "Token": creds["SessionToken"],
            "Expiration": (datetime.now(UTC) + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
    try:
        yield server
    finally:
        server.close()


def test_imds_mode_signs_in_serves_values_and_follows_a_change(
    kmsd: Replica, ops: Ops, moto_endpoint: str, imds: IMDSv2, tmp_path: Path
) -> None:
    shop(ops, moto_endpoint)
    agent = AgentProcess(
        kmsd_addr=kmsd.addr,
        moto_endpoint=moto_endpoint,
        paths=["prod/shop"],
        workdir=tmp_path,
        args=["--credentials", "imds"],
        env={
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.endpoint,
            "AWS_EC2_METADATA_DISABLED": "false",
        },
    ).wait_ready()
    try:
        assert agent.value("db") == {"user": "shop", "password": "first"}
        status = agent.get("/v1/status").body
        assert status["instance_id"] == "i-0abc123def4567890"
        assert status["principal"].endswith(":role/shop-host")
        assert imds.tokenless == []  # IMDSv2 only: never a request without a session token
        assert any(p.endswith("/shop-host") for p in imds.served)

        new = ops.put("prod/shop", "db", {"user": "shop", "password": "second"})
        wait_until(lambda: agent.value("db")["password"] == "second", "the new value")
        answer = agent.get("/v1/secrets/db", {"X-App-Process-Id": "4242"})
        assert answer.body["version_id"] == new
        assert answer.headers["X-Kmsagent-Upstream"] == "ok"

        def adopted() -> bool:
            doc = ops.json("adoption", "prod/shop")
            instances = {i["instance_id"]: i for i in doc["instances"]}
            me = instances.get("i-0abc123def4567890")
            return me is not None and me["processes"].get("4242") == {"db": new}

        wait_until(adopted, "adoption to show the instance and the process that read")
    finally:
        log = agent.stop()
    assert "first" not in log and "second" not in log  # no value in a log line
