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
import orjson
import pytest
from aiobotocore.session import AioSession
from aiohttp import web
from aiohttp.test_utils import TestClient

from kmsagent import sync
from kmsagent.aws import Reader
from kmsagent.creds import frozen
from kmsagent.reports import watch_body
from kmsagent.sync import Agent, SyncConfig
from kmsagent.upstream import Kmsd
from kmsd.keys import ADOPTION, METRICS
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


async def test_a_change_arriving_while_a_read_is_debounced_is_taken_at_once(
    api: Api, client: App, reader: Identity, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A debounce far longer than the wait below: a change held back by it would miss the wait.
    monkeypatch.setattr(sync, "REPORT_DEBOUNCE_S", 60.0)
    first = await shop(api, reader)
    async with running_agent(
        client, reader, moto_endpoint, ["prod/shop"], poll_timeout_s=120.0
    ) as agent:
        state = agent.paths["prod/shop"]
        await eventually(lambda: served(agent, "prod/shop")() == {"db": first} and state.polling)
        if agent.reads.record("prod/shop", "4242", {"db": first}, agent.clock()):
            state.report_changed.set()  # an application read: the agent waits to re-poll
        second = (await api.put_json("prod/shop/db", {"password": "second"}))["version_id"]
        await eventually(lambda: served(agent, "prod/shop")() == {"db": second}, within=20.0)


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


BIG = 1500  # more secrets than kmsd once took in one report (1,000)


async def big_application(api: Api, reader: Identity) -> None:
    """prod/big with BIG secrets, written the ordinary way (SM, then metadata), 16 at a time."""
    await api.ok("PUT", "/v1/nodes/prod/big?parents=true")
    limit = asyncio.Semaphore(16)

    async def put(i: int) -> None:
        async with limit:
            await api.put_json(f"prod/big/s{i:04d}", {"n": str(i)})

    await asyncio.gather(*(put(i) for i in range(BIG)))
    await api.grant(reader.arn, "prod/big", "read")


async def stored_row(client: App, db: asyncpg.Connection, path: str) -> Any:
    await client.app[ADOPTION].flush()
    return await db.fetchrow(
        "SELECT held::text AS held, versions::text AS versions, reports_digest, last_seen"
        " FROM adoption WHERE path = $1 AND instance_id = 'i-agent'",
        path,
    )


async def until_stored(
    client: App, db: asyncpg.Connection, path: str, check: Callable[[Any], bool]
) -> Any:
    """The agent's adoption row once ``check`` holds for it (10 s at most)."""
    async with asyncio.timeout(10):
        while not check(row := await stored_row(client, db, path)):  # noqa: ASYNC110 - a query
            await asyncio.sleep(0.02)
    return row


@pytest.mark.timeout(180)
async def test_an_agent_of_1500_secrets_reports_them_once_then_polls_with_their_digest(
    api: Api, client: App, reader: Identity, moto_endpoint: str, db: asyncpg.Connection
) -> None:
    await big_application(api, reader)
    async with running_agent(
        client, reader, moto_endpoint, ["prod/big"], poll_timeout_s=1.0
    ) as agent:
        state = agent.paths["prod/big"]
        await eventually(lambda: len(served(agent, "prod/big")()) == BIG, within=90)
        row = await until_stored(client, db, "prod/big", lambda r: r is not None)
        assert orjson.loads(row["held"]) == served(agent, "prod/big")()
        assert len(orjson.loads(row["versions"])) == BIG
        # Answered: from now on the polls carry the digest alone, and keep the row live.
        await eventually(lambda: state.reports_taken == row["reports_digest"])
        body, _ = watch_body(agent.report(state), state.reports_taken)
        assert sorted(body) == ["instance_id", "path", "path_version", "reports_digest"]
        assert len(orjson.dumps(body)) < 200
        polls = agent.stats["polls"]
        await eventually(lambda: agent.stats["polls"] >= polls + 2)
        later = await until_stored(
            client, db, "prod/big", lambda r: r["last_seen"] > row["last_seen"]
        )
        assert (later["held"], later["versions"]) == (row["held"], row["versions"])
        assert later["reports_digest"] == row["reports_digest"]

        # A rotation's first gate reads those reports: the owner's agent fetches the pending
        # version, its reports change, it sends them in full, and the gate is met.
        rot = await api.ok(
            "POST",
            "/v1/rotations",
            json={"path": "prod/big", "name": "s0042", "value": {"n": "new"}},
        )
        await until_stored(
            client,
            db,
            "prod/big",
            lambda r: rot["new_version"] in orjson.loads(r["versions"])["s0042"],
        )
        gate = (await api.ok("GET", f"/v1/rotations/{rot['id']}"))["gate"]
        assert (gate["met"], [i["instance_id"] for i in gate["held"]]) == (True, ["i-agent"])
        assert agent.stats["errors"] == 0  # not one poll refused


async def test_an_agent_asked_for_its_reports_sends_them_in_full(
    api: Api, client: App, reader: Identity, moto_endpoint: str, db: asyncpg.Connection
) -> None:
    first = await shop(api, reader)
    async with running_agent(
        client, reader, moto_endpoint, ["prod/shop"], poll_timeout_s=1.0
    ) as agent:
        state = agent.paths["prod/shop"]
        row = await until_stored(client, db, "prod/shop", lambda r: r is not None)
        await eventually(lambda: state.reports_taken == row["reports_digest"])
        # Forgotten by an operator: the agent's next digest names reports kmsd no longer has.
        await api.ok("DELETE", "/v1/adoption/prod/shop?instance=i-agent")
        back = await until_stored(client, db, "prod/shop", lambda r: r is not None)
        assert orjson.loads(back["held"]) == {"db": first}
        assert back["reports_digest"] == row["reports_digest"]
        requests = client.app[METRICS].requests
        assert requests.labels("POST", "/v1/watch", "409")._value.get() >= 1
        await eventually(lambda: state.reports_taken == row["reports_digest"])
        assert agent.stats["errors"] == 0
