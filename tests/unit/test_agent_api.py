"""kmsagent's local API in process: answers, headers, refusals and the localhost fences."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiobotocore.session import AioSession
from aiohttp.test_utils import TestClient

from kmsagent.api import local_app
from kmsagent.aws import Reader
from kmsagent.state import build_view
from kmsagent.sync import Agent, SyncConfig
from kmsagent.upstream import Kmsd
from tests.integration.conftest import eventually
from tests.unit.test_agent_state import VALUES, doc

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    """A real agent that never started its loops; views are published by the test."""

    async def no_credentials() -> Any:
        raise AssertionError("the local API never signs in")

    async with aiohttp.ClientSession() as http:
        kmsd = Kmsd(
            "http://127.0.0.1:9",
            "kmsd-test",
            credentials=no_credentials,
            region="us-east-1",
            sts_endpoint="http://127.0.0.1:9",
            http=http,
        )
        yield Agent(
            ["prod/shop/eu"],
            SyncConfig(instance_id="i-1"),
            kmsd,
            Reader(AioSession(), "us-east-1"),
            clock=Clock(),
        )


def synced(agent: Agent, version: int = 7, **changes: Any) -> None:
    state = agent.paths["prod/shop/eu"]
    agent.publish(state, build_view(doc(version, **changes), VALUES))
    state.confirmed_at = agent.clock()
    state.upstream = "ok"


@pytest.fixture
async def client(agent: Agent, aiohttp_client: MakeClient) -> Client:
    return await aiohttp_client(local_app(agent))


async def test_before_the_first_sync_reads_are_503_with_retry_after(client: Client) -> None:
    resp = await client.get("/v1/secrets/db")
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert resp.content_type == "application/problem+json"
    assert (await client.get("/healthz")).status == 503


async def test_one_secret_by_stage(agent: Agent, client: Client) -> None:
    synced(agent)
    resp = await client.get("/v1/secrets/db")
    assert resp.status == 200
    assert (await resp.json())["value"] == {"password": "two"}
    assert resp.headers["X-Kmsagent-Path-Version"] == "7"
    assert resp.headers["X-Kmsagent-Upstream"] == "ok"
    assert resp.headers["Cache-Control"] == "no-store"
    pending = await (await client.get("/v1/secrets/db?stage=pending")).json()
    assert (pending["version_id"], pending["value"]) == ("v3", {"password": "three"})
    previous = await (await client.get("/v1/secrets/db?stage=previous")).json()
    assert previous["version_id"] == "v1"
    assert (await client.get("/v1/secrets/tls?stage=pending")).status == 404
    assert (await client.get("/v1/secrets/db?stage=revoked")).status == 400
    assert (await client.get("/v1/secrets/nope")).status == 404
    assert (await client.get("/v1/secrets/files")).status == 400  # a data key
    assert (await client.get("/healthz")).status == 200


async def test_all_secrets_data_keys_and_version(agent: Agent, client: Client) -> None:
    synced(agent)
    everything = await (await client.get("/v1/secrets")).json()
    assert sorted(everything["secrets"]) == ["db", "files", "tls"]
    keys = await (await client.get("/v1/datakeys/files")).json()
    assert [k["version_id"] for k in keys["keys"]] == ["k2", "k1"]
    assert (await client.get("/v1/datakeys/db")).status == 400
    version = await (await client.get("/v1/version")).json()
    assert (version["path_version"], version["hash"]) == (7, "h7")


async def test_the_path_may_be_named_and_must_be_one_served(agent: Agent, client: Client) -> None:
    synced(agent)
    assert (await client.get("/v1/secrets/db?path=prod/shop/eu")).status == 200
    resp = await client.get("/v1/secrets/db?path=prod/other")
    assert resp.status == 404
    assert "prod/shop/eu" in (await resp.json())["detail"]


async def test_the_cache_age_grows_while_kmsd_is_away(agent: Agent, client: Client) -> None:
    synced(agent)
    state = agent.paths["prod/shop/eu"]
    state.upstream = "unreachable"
    agent.clock.now += 42.5  # type: ignore[attr-defined]
    resp = await client.get("/v1/secrets/db")
    assert resp.status == 200
    assert resp.headers["X-Kmsagent-Cache-Age"] == "42.500"
    assert resp.headers["X-Kmsagent-Upstream"] == "unreachable"
    metrics = await (await client.get("/metrics")).text()
    assert 'kmsagent_cache_age_seconds{path="prod/shop/eu"} 42.5' in metrics
    assert 'kmsagent_upstream{path="prod/shop/eu",state="unreachable"} 1.0' in metrics


async def test_process_reads_are_remembered_and_wake_a_report(agent: Agent, client: Client) -> None:
    synced(agent)
    state = agent.paths["prod/shop/eu"]
    await client.get("/v1/secrets/db", headers={"X-App-Process-Id": "4242"})
    assert state.report_changed.is_set()
    state.report_changed.clear()
    await client.get("/v1/secrets/db", headers={"X-App-Process-Id": "4242"})
    assert not state.report_changed.is_set()  # nothing new for kmsd
    await client.get("/v1/secrets", headers={"X-App-Process-Id": "web-2"})
    report = agent.report(state)
    assert report["processes"] == {
        "4242": {"db": "v2"},
        "web-2": {"db": "v2", "tls": "c1", "files": "k2"},
    }
    assert report["held"] == {"db": "v2", "tls": "c1", "files": "k2"}
    bad = await client.get("/v1/secrets/db", headers={"X-App-Process-Id": "no spaces"})
    assert bad.status == 400


async def test_local_watch_answers_on_a_change_or_times_out(agent: Agent, client: Client) -> None:
    synced(agent)
    assert (await client.get("/v1/watch?since=7&timeout=0")).status == 304
    at_once = await client.get("/v1/watch?since=6&timeout=30")
    assert (await at_once.json())["path_version"] == 7
    waiting = asyncio.create_task(client.get("/v1/watch?since=7&timeout=30"))
    await eventually(lambda: agent.paths["prod/shop/eu"].local_watchers == 1)  # parked
    synced(agent, 8, hash="h8")
    resp = await asyncio.wait_for(waiting, 10)
    assert resp.status == 200
    assert (await resp.json())["path_version"] == 8
    assert (await client.get("/v1/watch?since=x")).status == 400


async def test_localhost_listener_demands_the_token_and_refuses_proxies(
    agent: Agent, aiohttp_client: MakeClient
) -> None:
    synced(agent)
    client = await aiohttp_client(local_app(agent, token="s3cret-token"))
    assert (await client.get("/v1/secrets/db")).status == 401
    wrong = await client.get("/v1/secrets/db", headers={"X-Kmsagent-Token": "guess"})
    assert wrong.status == 401
    assert wrong.content_type == "application/problem+json"
    proxied = await client.get(
        "/v1/secrets/db",
        headers={"X-Kmsagent-Token": "s3cret-token", "X-Forwarded-For": "10.0.0.9"},
    )
    assert proxied.status == 403
    ok = await client.get("/v1/secrets/db", headers={"X-Kmsagent-Token": "s3cret-token"})
    assert ok.status == 200
    assert "s3cret-token" not in await wrong.text()


async def raw_get(client: Client, *headers: bytes) -> int:
    """A request sent byte for byte (an HTTP client would refuse to send such headers)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        lines = [b"GET /v1/secrets/db HTTP/1.1", b"Host: 127.0.0.1", *headers, b"Connection: close"]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        status_line = await asyncio.wait_for(reader.readline(), 10)
        return int(status_line.split()[1])
    finally:
        writer.close()


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param((b"X-Kmsagent-Token: \xff\xfe",), id="not-utf-8"),
        pytest.param((b"X-Kmsagent-Token: s3cret-token\xc3",), id="token-then-a-broken-byte"),
        pytest.param((b"X-Kmsagent-Token: \xc3\xa9t\xc3\xa9",), id="utf-8-but-wrong"),
        pytest.param((b"X-Kmsagent-Token: ",), id="empty"),
        pytest.param(
            (b"X-Kmsagent-Token: s3cret-token", b"X-Kmsagent-Token: s3cret-token"),
            id="repeated",
        ),
    ],
)
async def test_a_malformed_token_header_is_refused_like_a_wrong_one(
    agent: Agent, aiohttp_client: MakeClient, headers: tuple[bytes, ...]
) -> None:
    synced(agent)
    client = await aiohttp_client(local_app(agent, token="s3cret-token"))
    assert await raw_get(client, *headers) == 401
    assert await raw_get(client, b"x-kmsagent-token: s3cret-token") == 200  # the same path works
