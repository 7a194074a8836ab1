"""kmsagent end to end: kmsd, the real PostgreSQL, moto's server and the agent as a subprocess.

Each bootstrap mode signs in with the host's credentials and serves values; changes arrive
without a restart; kmsd outages are survived; the local API's fences hold.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import REGION, Identity, free_port
from tests.e2e.harness import (
    DEADLINE_S,
    AgentProcess,
    IMDSv2,
    Ops,
    Replica,
    Switch,
    credentials_file,
    wait_until,
)

pytestmark = pytest.mark.e2e


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
    assert "first" not in log  # no value in a log line
    assert "second" not in log


def test_file_mode_rereads_a_rewritten_credentials_file(
    kmsd: Replica, ops: Ops, moto_endpoint: str, make_user: Any, tmp_path: Path
) -> None:
    first, second = make_user("vm-host-a"), make_user("vm-host-b")
    ops("node", "create", "prod/shop", "--parents")
    ops.put("prod/shop", "db", {"password": "first"})
    for host in (first, second):
        ops("app", "bind", "prod/shop", "--role", host.arn)
    creds = tmp_path / "credentials"
    credentials_file(creds, first, 0o644)  # too open: the agent warns
    agent = AgentProcess(
        kmsd_addr=kmsd.addr,
        moto_endpoint=moto_endpoint,
        paths=["prod/shop"],
        workdir=tmp_path,
        args=["--credentials", "file", "--credentials-file", str(creds), "--instance-id", "vm-1"],
    ).wait_ready()
    try:
        assert agent.value("db") == {"password": "first"}
        status = agent.get("/v1/status").body
        assert status["principal"] == first.arn
        assert status["credentials"]["key_id"].endswith(first.access_key[-4:])
        assert status["credentials"]["reloads"] == 1

        credentials_file(creds, second, 0o600)  # the SSM agent rotated the keys
        ops.put("prod/shop", "db", {"password": "second"})  # the next AWS read signs anew
        wait_until(lambda: agent.value("db") == {"password": "second"}, "the new value")
        status = agent.get("/v1/status").body["credentials"]
        assert status["key_id"].endswith(second.access_key[-4:])
        assert status["reloads"] == 2
    finally:
        log = agent.stop()
    assert "credentials_file_too_open" in log
    assert first.secret_key not in log
    assert second.secret_key not in log


def test_web_identity_mode_exchanges_the_token_file_for_role_credentials(
    kmsd: Replica, ops: Ops, moto_endpoint: str, tmp_path: Path
) -> None:
    role_arn, _ = shop(ops, moto_endpoint, role_name="shop-pods")
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.service-account-token.signature")
    agent = AgentProcess(
        kmsd_addr=kmsd.addr,
        moto_endpoint=moto_endpoint,
        paths=["prod/shop"],
        workdir=tmp_path,
        args=["--credentials", "web-identity"],
        env={
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
            "AWS_ROLE_ARN": role_arn,
            "AWS_ROLE_SESSION_NAME": "shop-7f9c-x2",
            "POD_NAME": "shop-7f9c-x2",
        },
    ).wait_ready()
    try:
        assert agent.value("db") == {"user": "shop", "password": "first"}
        status = agent.get("/v1/status").body
        assert status["principal"] == role_arn  # assumed-role/shop-pods/... maps to the role
        assert status["instance_id"] == "shop-7f9c-x2"  # the pod's name
    finally:
        agent.stop()


def vm_agent(
    kmsd: Replica,
    ops: Ops,
    host: Identity,
    moto_endpoint: str,
    workdir: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> AgentProcess:
    """prod/shop with db = first, bound to ``host``, and an agent with its credentials file."""
    ops("node", "create", "prod/shop", "--parents")
    ops.put("prod/shop", "db", {"password": "first"})
    ops("app", "bind", "prod/shop", "--role", host.arn)
    workdir.mkdir(parents=True, exist_ok=True)
    creds = workdir / "credentials"
    credentials_file(creds, host, 0o600)
    return AgentProcess(
        kmsd_addr=kmsd.addr,
        moto_endpoint=moto_endpoint,
        paths=["prod/shop"],
        workdir=workdir,
        args=["--credentials", "file", "--credentials-file", str(creds), *args],
        env=env,
    )


@pytest.fixture
def user_agent(
    kmsd: Replica, ops: Ops, moto_endpoint: str, make_user: Any, tmp_path: Path
) -> Iterator[tuple[AgentProcess, Identity]]:
    """An agent on a VM (credentials file of a host user bound to prod/shop)."""
    host: Identity = make_user(f"vm-{tmp_path.name[-12:]}")
    agent = vm_agent(kmsd, ops, host, moto_endpoint, tmp_path, "--instance-id", "vm-1")
    try:
        yield agent.wait_ready(), host
    finally:
        agent.stop()


def test_with_kmsd_away_the_cache_is_served_with_its_age_then_polling_resumes(
    kmsd: Replica, ops: Ops, env: dict[str, str], user_agent: tuple[AgentProcess, Identity]
) -> None:
    agent, _ = user_agent
    fresh = agent.get("/v1/secrets/db")
    assert fresh.headers["X-Kmsagent-Upstream"] == "ok"
    code, _ = kmsd.stop()
    assert code == 0

    def away() -> bool:
        return agent.get("/v1/version").headers["X-Kmsagent-Upstream"] == "unreachable"

    wait_until(away, "the agent to notice kmsd is gone")
    first = agent.get("/v1/secrets/db")
    assert first.status == 200
    assert first.body["value"] == {"password": "first"}
    wait_until(
        lambda: (
            float(agent.get("/v1/secrets/db").headers["X-Kmsagent-Cache-Age"])
            > float(first.headers["X-Kmsagent-Cache-Age"])
        ),
        "the reported age to grow",
    )
    metrics = agent.get("/metrics").body.decode()
    assert 'kmsagent_upstream{path="prod/shop",state="unreachable"} 1.0' in metrics
    assert 'kmsagent_cache_age_seconds{path="prod/shop"}' in metrics

    back = Replica(env, kmsd.log.parent, port=kmsd.port)  # same address, same database
    try:
        ops.kmsd = back
        ops.put("prod/shop", "db", {"password": "after"})
        wait_until(lambda: agent.value("db") == {"password": "after"}, "the agent to resume")
        assert agent.get("/v1/version").headers["X-Kmsagent-Upstream"] == "ok"
    finally:
        back.stop()


def test_a_reader_hammering_the_socket_never_sees_a_mixed_set(
    ops: Ops, user_agent: tuple[AgentProcess, Identity]
) -> None:
    agent, _ = user_agent
    ops.put("prod/shop", "cache", {"password": "first"})
    wait_until(lambda: "cache" in agent.get("/v1/secrets").body["secrets"], "both secrets")
    seen: list[tuple[int, str, str]] = []
    done = threading.Event()

    def hammer() -> None:
        while not done.is_set():
            answer = agent.get("/v1/secrets")
            secrets = answer.body["secrets"]
            seen.append(
                (
                    int(answer.headers["X-Kmsagent-Path-Version"]),
                    secrets["db"]["value"]["password"],
                    secrets["cache"]["value"]["password"],
                )
            )

    readers = [threading.Thread(target=hammer) for _ in range(2)]
    for r in readers:
        r.start()
    try:
        for gen in range(1, 5):  # db and cache change one after the other, each its own version
            ops.put("prod/shop", "db", {"password": f"gen-{gen}"})
            ops.put("prod/shop", "cache", {"password": f"gen-{gen}"})
        wait_until(lambda: bool(seen) and seen[-1][1:] == ("gen-4", "gen-4"), "the last generation")
    finally:
        done.set()
        for r in readers:
            r.join(timeout=DEADLINE_S)
    # One path version is one whole set: the same version never comes with different values,
    # and a newer set never comes with an older version number.
    by_version: dict[int, set[tuple[str, str]]] = {}
    for version, db, cache in seen:
        by_version.setdefault(version, set()).add((db, cache))
    assert all(len(sets) == 1 for sets in by_version.values()), by_version
    order = [next(iter(by_version[v])) for v in sorted(by_version)]
    gens = [tuple(0 if s == "first" else int(s.split("-")[1]) for s in pair) for pair in order]
    assert gens == sorted(gens)
    assert all(db - cache in (0, 1) for db, cache in gens)  # db is written first, then cache
    assert len(seen) > 20


def test_local_fences_token_on_localhost_and_the_socket_mode(
    kmsd: Replica, ops: Ops, moto_endpoint: str, make_user: Any, tmp_path: Path
) -> None:
    port = free_port()
    token_file = tmp_path / "run" / "token"
    agent = vm_agent(
        kmsd,
        ops,
        make_user("vm-fenced"),
        moto_endpoint,
        tmp_path,
        *("--listen-port", str(port), "--token-file", str(token_file)),
    ).wait_ready()
    try:
        assert stat.S_IMODE(os.stat(agent.socket).st_mode) == 0o660
        assert stat.S_ISSOCK(os.stat(agent.socket).st_mode)
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        url = f"http://127.0.0.1:{port}/v1/secrets/db"

        def get(headers: dict[str, str]) -> tuple[int, Any]:
            req = urllib.request.Request(url, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as err:
                refusal = err
            assert refusal.headers["Content-Type"] == "application/problem+json"
            return refusal.code, json.loads(refusal.read())

        assert get({})[0] == 401
        assert get({"X-Kmsagent-Token": "not-the-token"})[0] == 401
        forwarded = get({"X-Kmsagent-Token": token, "X-Forwarded-For": "203.0.113.9"})
        assert forwarded[0] == 403
        status, doc = get({"X-Kmsagent-Token": token})
        assert status == 200
        assert doc["value"] == {"password": "first"}
    finally:
        agent.stop()
    assert not os.path.exists(agent.socket)  # removed on a clean stop


def test_a_path_the_host_is_not_bound_to_is_refused_and_reported(
    kmsd: Replica, ops: Ops, moto_endpoint: str, user_agent: tuple[AgentProcess, Identity]
) -> None:
    agent, _ = user_agent
    ops("node", "create", "prod/billing", "--parents")
    ops.put("prod/billing", "db", {"password": "not-yours"})
    other = AgentProcess(
        kmsd_addr=kmsd.addr,
        moto_endpoint=moto_endpoint,
        paths=["prod/shop", "prod/billing"],
        workdir=agent.log.parent / "second",
        args=agent.argv[agent.argv.index("--credentials") :],
    )
    try:
        wait_until(
            lambda: (
                other.status().get("paths", {}).get("prod/billing", {}).get("upstream") == "refused"
            ),
            "kmsd to refuse the unbound path",
        )
        refused = other.get("/v1/secrets?path=prod/billing")
        assert refused.status == 503
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert "403" in refused.body["detail"]
        assert "prod/billing" in refused.body["detail"]
        # The bound path is served all the same.
        wait_until(lambda: other.get("/v1/version?path=prod/shop").status == 200, "prod/shop")
        assert other.value("db", path="prod/shop") == {"password": "first"}
        unknown = other.get("/v1/secrets/db?path=prod/nowhere")
        assert unknown.status == 404
    finally:
        log = other.stop()
    assert '"upstream": "refused"' in log or '"upstream":"refused"' in log


def test_with_aws_away_the_last_good_values_stay_served(
    kmsd: Replica, ops: Ops, moto_endpoint: str, make_user: Any, tmp_path: Path
) -> None:
    secrets_manager = Switch(moto_endpoint)  # the agent's only way to Secrets Manager
    agent = vm_agent(
        kmsd,
        ops,
        make_user("vm-cut-off"),
        moto_endpoint,
        tmp_path,
        env={"AWS_ENDPOINT_URL_SECRETS_MANAGER": secrets_manager.endpoint},
    ).wait_ready()
    try:
        assert agent.value("db") == {"password": "first"}
        secrets_manager.down()
        new = ops.put("prod/shop", "db", {"password": "second"})

        def failing() -> bool:
            return "secretsmanager" in (agent.status()["paths"]["prod/shop"]["error"] or "")

        wait_until(failing, "the agent to fail reading the new version")
        stale = agent.get("/v1/secrets/db")
        assert stale.status == 200
        assert stale.body["value"] == {"password": "first"}  # the last good value, whole
        assert stale.headers["X-Kmsagent-Upstream"] == "ok"  # kmsd is fine; AWS is not

        secrets_manager.up()
        wait_until(lambda: agent.get("/v1/secrets/db").body["version_id"] == new, "recovery")
        assert agent.value("db") == {"password": "second"}
    finally:
        agent.stop()
        secrets_manager.down()


def test_the_agent_signs_in_again_before_its_session_expires(
    env: dict[str, str], admin: Identity, moto_endpoint: str, make_user: Any, tmp_path: Path
) -> None:
    short = Replica({**env, "KMSD_TOKEN_TTL": "5"}, tmp_path)  # sessions of five seconds
    ops = Ops(short, admin, moto_endpoint)
    # Polls end every second, so the session's expiry is met between them.
    agent = vm_agent(
        short,
        ops,
        make_user("vm-short-session"),
        moto_endpoint,
        tmp_path / "agent",
        "--poll-timeout",
        "1",
    )
    try:
        agent.wait_ready()
        wait_until(lambda: agent.status()["stats"]["polls"] >= 3, "a few polls")

        def logins() -> float:
            text = agent.get("/metrics").body.decode()
            return float(re.search(r"^kmsagent_logins_total (\S+)$", text, re.M)[1])  # type: ignore[index]

        wait_until(lambda: logins() >= 2, "the agent to sign in again")
        ops.put("prod/shop", "db", {"password": "second"})
        wait_until(lambda: agent.value("db") == {"password": "second"}, "the new value")
    finally:
        log = agent.stop()
        short.stop()
    assert "sync_failed" not in log  # renewed ahead of expiry: never refused on the way
