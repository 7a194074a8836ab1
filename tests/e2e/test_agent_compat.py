"""kmsagent speaks AWS's Secrets Manager Agent API and the SM JSON protocol, end to end.

kmsd, the real PostgreSQL, moto's server and the agent as a subprocess: curl-style requests
and boto3 pointed at the compat port read what applications written for AWS read, by name,
SM name and ARN, by stage; the fences refuse what AWS's agent refuses; a put is served at once.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from tests.conftest import REGION, Identity, free_port
from tests.e2e.harness import AgentProcess, Ops, Replica, credentials_file, wait_until

pytestmark = pytest.mark.e2e

TOKEN = "compat-token-for-tests-0123456789"


class Compat:
    """A client of the compat port, as curl in a shell script would be."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            with exc:
                raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode()

    def secret(self, secret_id: str, **query: str) -> tuple[int, Any]:
        params = urllib.parse.urlencode({"secretId": secret_id, **query})
        return self.get(f"/secretsmanager/get?{params}", {"X-Aws-Parameters-Secrets-Token": TOKEN})


@pytest.fixture
def setup(
    kmsd: Replica, admin: Identity, moto_endpoint: str, make_user: Any, tmp_path: Path
) -> Iterator[tuple[Ops, AgentProcess, Compat]]:
    ops = Ops(kmsd, admin, moto_endpoint)
    host = make_user(f"compat-host-{uuid.uuid4().hex[:8]}")
    ops("node", "create", "prod/shop/eu", "--parents")
    ops("node", "create", "prod/other", "--parents")
    ops("app", "bind", "prod/shop", "--role", host.arn)
    ops.put("prod/shop", "db", {"user": "shop", "password": "first"})
    ops.put("prod/other", "theirs", {"k": "not-for-shop"})
    creds = tmp_path / "credentials"
    credentials_file(creds, host, 0o600)
    port = free_port()
    agent = AgentProcess(
        kmsd_addr=kmsd.addr,
        moto_endpoint=moto_endpoint,
        paths=["prod/shop/eu"],
        workdir=tmp_path,
        args=[
            "--credentials",
            "file",
            "--credentials-file",
            str(creds),
            "--instance-id",
            "vm-compat",
            "--sm-compat-port",
            str(port),
        ],
        env={"AWS_TOKEN": TOKEN},
    ).wait_ready()
    try:
        yield ops, agent, Compat(port)
    finally:
        log = agent.stop()
        assert "first" not in log
        assert TOKEN not in log


def _sdk(port: int) -> Any:
    """boto3 as an unchanged application uses it, pointed at the agent."""
    return boto3.client(
        "secretsmanager",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name=REGION,
        aws_access_key_id="AKIAAPPLICATION0000",
        aws_secret_access_key="app-secret",
        config=Config(retries={"max_attempts": 1}),
    )


def test_the_aws_agent_api_serves_by_name_sm_name_and_arn(
    setup: tuple[Ops, AgentProcess, Compat],
) -> None:
    ops, _, compat = setup
    assert compat.get("/ping") == (200, "healthy")
    status, doc = compat.secret("db")
    assert status == 200, doc
    assert json.loads(doc["SecretString"]) == {"user": "shop", "password": "first"}
    assert doc["VersionStages"] == ["AWSCURRENT"]
    assert float(doc["CreatedDate"]) > 0
    meta = ops.json("secret", "show", "prod/shop", "db")
    assert (doc["ARN"], doc["VersionId"]) == (meta["sm_arn"], meta["versions"][0]["version_id"])
    assert doc["ARN"].split(":secret:")[1].startswith(doc["Name"] + "-")
    for secret_id in (doc["Name"], doc["ARN"], "prod/shop/db"):
        assert compat.secret(secret_id)[1]["VersionId"] == doc["VersionId"]
    path_form = compat.get(
        f"/v1/{urllib.parse.quote(doc['Name'], safe='/')}",
        {"X-Vault-Token": TOKEN},
    )
    assert path_form[1]["VersionId"] == doc["VersionId"]
    by_stage = compat.secret("db", versionStage="AWSCURRENT", versionId=doc["VersionId"])
    assert by_stage[1]["VersionId"] == doc["VersionId"]
    assert compat.secret("db", versionStage="AWSPENDING")[0] == 400


def test_a_put_is_served_without_waiting_for_a_ttl(
    setup: tuple[Ops, AgentProcess, Compat],
) -> None:
    ops, _, compat = setup
    first = compat.secret("db")[1]["VersionId"]
    second = ops.put("prod/shop", "db", {"user": "shop", "password": "second"})
    wait_until(lambda: compat.secret("db")[1]["VersionId"] == second, "the pushed change")
    assert compat.secret("db", versionStage="AWSPREVIOUS")[1]["VersionId"] == first
    # refreshNow asks kmsd first: the answer is the newest version however the push fares.
    third = ops.put("prod/shop", "db", {"user": "shop", "password": "third"})
    assert compat.secret("db", refreshNow="true")[1]["VersionId"] == third


@pytest.mark.parametrize(
    ("path", "headers", "status", "body"),
    [
        ("/secretsmanager/get?secretId=db", {}, 403, "Bad Token"),
        ("/secretsmanager/get?secretId=db", {"X-Aws-Parameters-Secrets-Token": "x"}, 403, None),
        (
            "/secretsmanager/get?secretId=db",
            {"X-Aws-Parameters-Secrets-Token": TOKEN, "X-Forwarded-For": "10.0.0.1"},
            400,
            "Forwarded",
        ),
        ("/secretsmanager/get?secretId=db&ttl=5", None, 400, "unknown parameter: ttl"),
        ("/secretsmanager/get", None, 400, "missing parameter secretId"),
        ("/secretsmanager/get?secretId=db&refreshNow=maybe", None, 400, None),
        ("/elsewhere", None, 404, "Not found"),
    ],
)
def test_the_fences_of_aws_agent(
    setup: tuple[Ops, AgentProcess, Compat],
    path: str,
    headers: dict[str, str] | None,
    status: int,
    body: str | None,
) -> None:
    _, _, compat = setup
    sent = {"X-Aws-Parameters-Secrets-Token": TOKEN} if headers is None else headers
    got_status, got = compat.get(path, sent)
    assert got_status == status, got
    if body is not None:
        assert got == body
    assert "first" not in str(got)


def test_a_secret_of_another_application_is_not_found(
    setup: tuple[Ops, AgentProcess, Compat],
) -> None:
    ops, _, compat = setup
    theirs = ops.json("secret", "show", "prod/other", "theirs")["sm_arn"]
    sm_name = theirs.split(":secret:")[1].rsplit("-", 1)[0]
    for secret_id in ("theirs", sm_name, theirs, "prod/other/theirs"):
        status, doc = compat.secret(secret_id)
        assert (status, doc["__type"]) == (400, "ResourceNotFoundException"), secret_id


def test_other_methods_are_not_allowed(setup: tuple[Ops, AgentProcess, Compat]) -> None:
    _, _, compat = setup
    conn = http.client.HTTPConnection(compat.base.removeprefix("http://"), timeout=10)
    try:
        conn.request(
            "DELETE",
            "/secretsmanager/get?secretId=db",
            headers={"X-Aws-Parameters-Secrets-Token": TOKEN},
        )
        answer = conn.getresponse()
        assert (answer.status, answer.read()) == (405, b"Not allowed")
    finally:
        conn.close()


def test_boto3_pointed_at_the_agent_reads_unchanged(
    setup: tuple[Ops, AgentProcess, Compat], tmp_path: Path
) -> None:
    ops, _, compat = setup
    sm = _sdk(int(compat.base.rsplit(":", 1)[1]))
    answer = sm.get_secret_value(SecretId="db")
    assert json.loads(answer["SecretString"])["password"] == "first"
    assert answer["VersionStages"] == ["AWSCURRENT"]
    assert answer["CreatedDate"].year >= 2025
    assert sm.describe_secret(SecretId=answer["ARN"])["VersionIdsToStages"] == {
        answer["VersionId"]: ["AWSCURRENT"]
    }
    listed = sm.list_secret_version_ids(SecretId=answer["Name"])["Versions"]
    assert [v["VersionId"] for v in listed] == [answer["VersionId"]]
    batch = sm.batch_get_secret_value(SecretIdList=["db", "theirs"])
    assert [v["Name"] for v in batch["SecretValues"]] == [answer["Name"]]
    assert [(e["SecretId"], e["ErrorCode"]) for e in batch["Errors"]] == [
        ("theirs", "ResourceNotFoundException")
    ]
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        sm.get_secret_value(SecretId="theirs")
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        sm.put_secret_value(SecretId="db", SecretString="x")
    assert caught.value.response["Error"]["Code"] == "UnknownOperationException"
    blob = tmp_path / "tls.bin"
    blob.write_bytes(b"\0k")
    ops("secret", "put", "prod/shop", "tls", "--file", str(blob))
    wait_until(lambda: compat.secret("tls")[0] == 200, "the binary secret")
    assert sm.get_secret_value(SecretId="tls")["SecretBinary"] == b"\0k"


def test_an_unsigned_post_is_refused(setup: tuple[Ops, AgentProcess, Compat]) -> None:
    """A fetched URL (or a form post) cannot carry a SigV4 Authorization and X-Amz-Target."""
    _, _, compat = setup
    for headers in (
        {"Content-Type": "application/x-amz-json-1.1"},
        {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "secretsmanager.GetSecretValue",
        },
    ):
        conn = http.client.HTTPConnection(compat.base.removeprefix("http://"), timeout=10)
        try:
            conn.request("POST", "/", body=b'{"SecretId": "db"}', headers=headers)
            answer = conn.getresponse()
            body = answer.read()
        finally:
            conn.close()
        assert answer.status == 403
        assert json.loads(body)["__type"] == "MissingAuthenticationTokenException"
        assert b"first" not in body
