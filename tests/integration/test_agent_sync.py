"""kmsagent's sync loop in process, against a real kmsd app, PostgreSQL and moto's server."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg
import boto3
import pytest
from aiobotocore.session import AioSession
from aiohttp import web
from aiohttp.test_utils import TestClient

from kmsagent.aws import Reader
from kmsagent.creds import frozen
from kmsagent.sync import Agent, SyncConfig
from kmsagent.upstream import Kmsd
from kmsd.keys import ADOPTION
from tests.conftest import REGION, SERVER_ID, Identity
from tests.integration.conftest import Api, eventually

App = TestClient[web.Request, web.Application]

pytestmark = pytest.mark.usefixtures("aws_endpoint_env")


@pytest.fixture
def aws_endpoint_env(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)


@asynccontextmanager
async def running_agent(
    client: App, host: Identity, moto_endpoint: str, paths: list[str], **config: Any
) -> AsyncIterator[Agent]:
    """A real agent with the host's keys, its loops running until the block ends."""
    session = AioSession()
    session.set_credentials(host.access_key, host.secret_key)
    async with aiohttp.ClientSession() as http, Reader(session, REGION) as reader:
        kmsd = Kmsd(
            str(client.make_url("")),
            SERVER_ID,
            credentials=lambda: frozen(session),
            region=REGION,
            sts_endpoint=moto_endpoint,
            http=http,
        )
        agent = Agent(paths, SyncConfig(instance_id="i-agent", **config), kmsd, reader)
        task = asyncio.create_task(agent.run())
        try:
            yield agent
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


def served(agent: Agent, path: str) -> Callable[[], dict[str, str]]:
    """The current version id of each secret the agent serves for ``path``."""

    def held() -> dict[str, str]:
        view = agent.paths[path].view
        return view.held() if view is not None else {}

    return held


async def shop(api: Api, reader: Identity) -> str:
    await api.ok("PUT", "/v1/nodes/prod/shop?parents=true")
    doc = await api.put_json("prod/shop/db", {"password": "first"})
    await api.grant(reader.arn, "prod/shop", "read")
    return str(doc["version_id"])


async def test_the_full_resync_catches_a_change_no_poll_announced(
    api: Api,
    client: App,
    reader: Identity,
    moto_endpoint: str,
    db: asyncpg.Connection,
    sm_client: Any,
) -> None:
    first = await shop(api, reader)
    async with running_agent(client, reader, moto_endpoint, ["prod/shop"], resync_s=1.0) as agent:
        await eventually(lambda: served(agent, "prod/shop")() == {"db": first})
        version = agent.paths["prod/shop"].view.path_version  # type: ignore[union-attr]
        # A change that bypassed the change log: no path version bump, no NOTIFY, no wake.
        arn = (await api.effective("prod/shop"))["secrets"][0]["sm_arn"]
        second = sm_client.put_secret_value(SecretId=arn, SecretString='{"password": "second"}')
        await db.execute(
            """UPDATE secret_versions SET stage = 'previous'
               WHERE version_id = $1 AND stage = 'current'""",
            first,
        )
        await db.execute(
            """INSERT INTO secret_versions (secret_id, version_id, stage, created_by)
               SELECT secret_id, $2, 'current', 'test' FROM secret_versions
               WHERE version_id = $1""",
            first,
            second["VersionId"],
        )
        await eventually(lambda: served(agent, "prod/shop")() == {"db": second["VersionId"]})
        view = agent.paths["prod/shop"].view
        assert view is not None
        assert view.path_version == version  # the poll had nothing to say; the resync did
        assert view.secrets["db"].current.value == '{"password": "second"}'  # type: ignore[union-attr]
        assert agent.stats["resyncs"] >= 2


async def reported_processes(client: App, api: Api) -> Any:
    await client.app[ADOPTION].flush()
    doc = await api.ok("GET", "/v1/adoption/prod/shop")
    return {i["instance_id"]: i["processes"] for i in doc["instances"]}


async def test_a_process_read_reaches_adoption_without_waiting_for_the_hold(
    api: Api, client: App, reader: Identity, moto_endpoint: str
) -> None:
    first = await shop(api, reader)
    async with running_agent(
        client, reader, moto_endpoint, ["prod/shop"], poll_timeout_s=120.0
    ) as agent:
        state = agent.paths["prod/shop"]
        await eventually(lambda: state.polling)
        polls = agent.stats["polls"]
        async with asyncio.timeout(10):  # until kmsd has the first poll's report
            while (seen := await reported_processes(client, api)) != {"i-agent": {}}:
                assert seen == {}
        if agent.reads.record("prod/shop", "4242", {"db": first}, agent.clock()):
            state.report_changed.set()  # what the local API does on an app's read
        await eventually(lambda: agent.stats["polls"] > polls)  # re-polled with the news

        async with asyncio.timeout(10):  # until kmsd has the new poll's report
            while (seen := await reported_processes(client, api)) != {
                "i-agent": {"4242": {"db": first}}
            }:
                assert seen == {"i-agent": {}}
        assert state.polling  # and the new poll is held


async def test_a_new_version_is_fetched_once_and_old_values_are_dropped(
    api: Api, client: App, reader: Identity, moto_endpoint: str
) -> None:
    first = await shop(api, reader)
    async with running_agent(client, reader, moto_endpoint, ["prod/shop"]) as agent:
        await eventually(lambda: served(agent, "prod/shop")() == {"db": first})
        assert agent.reader.calls == 1
        second = (await api.put_json("prod/shop/db", {"password": "second"}))["version_id"]
        await eventually(lambda: served(agent, "prod/shop")() == {"db": second})
        # current and previous are both offered to the owner: only the new one was read
        assert agent.reader.calls == 2
        third = (await api.put_json("prod/shop/db", {"password": "third"}))["version_id"]
        await eventually(lambda: served(agent, "prod/shop")() == {"db": third})
        assert agent.reader.calls == 3
        assert {vid for _, vid in agent.values} == {second, third}  # the first is gone


async def test_data_keys_are_decrypted_with_their_context_every_period_newest_first(
    api: Api, client: App, reader: Identity, moto_endpoint: str
) -> None:
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name=REGION)
    cmk = kms.create_key(Description="shop files")["KeyMetadata"]["Arn"]
    await shop(api, reader)
    await api.ok("POST", "/v1/datakeys/prod/shop/files", json={"cmk": cmk})
    await api.ok("POST", "/v1/datakeys/prod/shop/files", json={"cmk": cmk})  # next period
    doc = next(s for s in (await api.effective("prod/shop"))["secrets"] if s["name"] == "files")
    async with running_agent(client, reader, moto_endpoint, ["prod/shop"]) as agent:
        await eventually(lambda: "files" in served(agent, "prod/shop")())
        view = agent.paths["prod/shop"].view
        assert view is not None
        keys = view.secrets["files"].versions
        assert [k.version_id for k in keys] == [v["version_id"] for v in doc["versions"]]
        for key, meta in zip(keys, doc["versions"], strict=True):
            expected = kms.decrypt(
                CiphertextBlob=base64.b64decode(meta["ciphertext_blob"]),
                EncryptionContext=doc["encryption_context"],
            )["Plaintext"]
            assert key.value == expected
            assert len(key.value) == 32
        assert view.held()["files"] == keys[0].version_id  # the newest key is the one in use
