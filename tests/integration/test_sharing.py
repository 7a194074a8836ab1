"""Sharing and references: B sees A's shared secret, wakes when it changes, may override it."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from kmsd.keys import HUB
from tests.integration.conftest import Api, eventually, snapshot


async def _setup(api: Api) -> dict[str, Any]:
    for path in ("prod/a", "prod/b/eu/blue"):
        await api.ok("PUT", f"/v1/nodes/{path}?parents=true")
    v1 = await api.put_json("prod/a/signing", {"k": "1"})
    await api.ok("POST", "/v1/shares", json={"secret": "prod/a/signing", "to": "prod/b"})
    await api.ok("PUT", "/v1/refs/prod/b/a-signing", json={"target": "prod/a/signing"})
    return v1


async def test_a_reference_shows_the_shared_secret_current_only(api: Api) -> None:
    v1 = await _setup(api)
    v2 = await api.put_json("prod/a/signing", {"k": "2"})
    eff = await api.effective("prod/b/eu")
    (entry,) = eff["secrets"]
    assert (entry["name"], entry["source"], entry["via"]) == (
        "a-signing",
        "prod/a/signing",
        "prod/b",
    )
    (only,) = entry["versions"]
    assert (only["version_id"], only["stage"]) == (v2["version_id"], "current")
    owner = (await api.effective("prod/a"))["secrets"][0]["versions"]
    assert [v["version_id"] for v in owner] == [v2["version_id"], v1["version_id"]]


async def test_b_watch_wakes_when_a_shared_secret_changes(api: Api, client: Any) -> None:
    await _setup(api)
    version = (await api.effective("prod/b/eu/blue"))["path_version"]
    body = {"path": "prod/b/eu/blue", "path_version": version, "instance_id": "b-1"}
    waiting = asyncio.create_task(api.call("POST", "/v1/watch?timeout=60", json=body))
    await eventually(lambda: client.app[HUB].held == 1)
    v2 = await api.put_json("prod/a/signing", {"k": "2"})
    status, doc = await waiting
    assert status == 200
    assert doc["secrets"][0]["versions"][0]["version_id"] == v2["version_id"]


async def test_a_local_secret_overrides_a_reference_above_it(api: Api) -> None:
    await _setup(api)
    local = await api.put_json("prod/b/eu/a-signing", {"k": "local"})
    (entry,) = (await api.effective("prod/b/eu/blue"))["secrets"]
    assert (entry["source"], entry["overrides"]) == ("prod/b/eu", ["prod/a/signing"])
    assert entry["versions"][0]["version_id"] == local["version_id"]


async def test_unshared_secrets_cannot_be_referenced(api: Api, db: asyncpg.Connection) -> None:
    await _setup(api)
    await api.put_json("prod/a/private", {"k": "x"})
    before = await snapshot(db)
    status, problem = await api.call(
        "PUT", "/v1/refs/prod/b/private", json={"target": "prod/a/private"}
    )
    assert status == 404
    assert "is shared with" in problem["detail"]
    assert await snapshot(db) == before
    # A secret that does not exist gets the very same answer, so a caller who cannot see
    # prod/a learns nothing about what lives there.
    missing_status, missing = await api.call(
        "PUT", "/v1/refs/prod/b/private", json={"target": "prod/a/no-such-secret"}
    )
    assert missing_status == 404
    assert missing["detail"].replace("no-such-secret", "private") == problem["detail"]
    assert await snapshot(db) == before
    # A name taken by a local secret on the same node is refused too.
    await api.put_json("prod/b/taken", {"k": "x"})
    status, _ = await api.call("PUT", "/v1/refs/prod/b/taken", json={"target": "prod/a/signing"})
    assert status == 409


async def test_unsharing_is_refused_while_referenced_unless_asked(api: Api) -> None:
    await _setup(api)
    query = "secret=prod/a/signing&to=prod/b"
    status, problem = await api.call("DELETE", f"/v1/shares?{query}")
    assert status == 409
    assert problem["references"] == ["prod/b"]
    assert (await api.call("DELETE", "/v1/secrets/prod/a/signing"))[0] == 409
    assert (await api.call("DELETE", "/v1/nodes/prod/a?recursive=true"))[0] == 409
    version = (await api.effective("prod/b"))["path_version"]
    doc = await api.ok("DELETE", f"/v1/shares?{query}&remove_refs=true")
    assert doc["removed_refs"] == 1
    after = await api.effective("prod/b")
    assert (after["secrets"], after["path_version"] > version) == ([], True)
    assert (await api.call("DELETE", "/v1/secrets/prod/a/signing"))[0] == 200


async def test_the_referencing_hosts_policy_reads_the_shared_secret_current_only(
    api: Api,
) -> None:
    v1 = await _setup(api)
    policy = await api.ok("GET", "/v1/iam-policy/app/prod/b?shape=exact")
    (statement,) = policy["Statement"]
    assert statement["Sid"] == "ReadSharedSecretsCurrentOnly"
    assert statement["Resource"] == [v1["sm_arn"]]
    assert statement["Condition"]["ForAnyValue:StringEquals"] == {
        "secretsmanager:VersionStage": ["AWSCURRENT"]
    }
