"""Webhooks cannot be pointed at kmsd's own network: refused when set, refused again at each
delivery against a fresh lookup that the connection is then pinned to, and never redirected.

Real HTTP throughout: kmsd's API over aiohttp_client, receivers as real servers on loopback
(reachable only where the test allows 127.0.0.0/8), deliveries driven with ``deliver_due``.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kmsd.domain.access import parse_cidrs
from kmsd.keys import HTTP, POOL, WEBHOOK_KEYS
from kmsd.services import webhooks
from tests.conftest import Identity
from tests.integration.conftest import Api, ClientFactory, sign_in
from tests.integration.test_rotation import OWNER, setup_shared, start

LOOPBACK = parse_cidrs(["127.0.0.0/8", "::1/128"])
HOSTILE = [
    "http://127.0.0.1:8700/v1/nodes",
    "http://localhost:8700/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:127.0.0.1]:8700/",
    "http://[::ffff:7f00:1]:8700/",
    "http://[::ffff:169.254.169.254]/latest",
    "http://[::127.0.0.1]:8700/",
    "http://[64:ff9b::a9fe:a9fe]/latest",
    "http://[fd00:ec2::254]/latest",
    "http://[::1]:8700/",
    "http://[fe80::1]/",
    "http://[fd12:3456::1]/",
    "http://[fec0::1]/",
    "http://[2002:7f00:1::]/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://100.100.100.200/latest",
    "http://169.254.170.2/v2/credentials",
    "http://0.0.0.0:8700/",
    "http://2130706433:8700/",
    "http://127.1:8700/",
    "http://user:pw@example.com/",
    "ftp://example.com/",
    "http://[::1/",
]


class Receiver:
    """A real HTTP server on loopback that records what reaches it."""

    def __init__(self, server: TestServer, got: list[web.Request]) -> None:
        self.server, self.got = server, got

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server.port}/hook"


@pytest.fixture
async def make_receiver(aiohttp_server: Any) -> Any:
    async def make(answer: web.Response | None = None) -> Receiver:
        got: list[web.Request] = []

        async def hook(request: web.Request) -> web.StreamResponse:
            await request.read()
            got.append(request)
            return answer if answer is not None else web.Response(status=204)

        app = web.Application()
        app.router.add_route("*", "/hook", hook)
        return Receiver(await aiohttp_server(app, host="127.0.0.1"), got)

    return make


async def _api(make_client: ClientFactory, admin: Identity, moto_endpoint: str) -> Api:
    api = await sign_in(await make_client(webhook_allowed_cidrs=LOOPBACK), admin, moto_endpoint)
    await setup_shared(api)
    return api


async def _deliver(api: Api, allowed: Any = LOOPBACK) -> int:
    app = api.client.app
    return await webhooks.deliver_due(app[POOL], app[HTTP], allowed, None, keys=app[WEBHOOK_KEYS])


async def _last_error(db: asyncpg.Connection) -> str | None:
    error: str | None = await db.fetchval(
        "SELECT last_error FROM webhook_deliveries WHERE app_path = $1 ORDER BY id LIMIT 1", OWNER
    )
    return error


@pytest.mark.parametrize("url", HOSTILE)
async def test_a_hostile_url_is_refused_when_set(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str, url: str
) -> None:
    api = await sign_in(await make_client(), admin, moto_endpoint)
    await api.ok("PUT", f"/v1/nodes/{OWNER}?parents=true")
    async with api.client.put(
        f"/v1/webhooks/{OWNER}", json={"url": url}, headers=api.headers
    ) as resp:
        assert resp.status == 400, await resp.text()
        assert resp.content_type == "application/problem+json"
        problem = await resp.json(content_type=None)
    assert problem["type"].endswith("/invalid-input")
    assert problem["detail"]


async def test_metadata_stays_refused_however_wide_the_allowlist(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str
) -> None:
    wide = parse_cidrs(["0.0.0.0/0", "::/0"])
    api = await sign_in(await make_client(webhook_allowed_cidrs=wide), admin, moto_endpoint)
    await api.ok("PUT", f"/v1/nodes/{OWNER}?parents=true")
    for url in ("http://169.254.169.254/", "http://[fd00:ec2::254]/", "http://[::ffff:a9fe:a9fe]/"):
        status, problem = await api.call("PUT", f"/v1/webhooks/{OWNER}", json={"url": url})
        assert status == 400, problem
        assert "metadata" in problem["detail"]


async def test_an_allowed_loopback_receiver_gets_deliveries_by_address_and_by_name(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str, make_receiver: Any
) -> None:
    api = await _api(make_client, admin, moto_endpoint)
    receiver = await make_receiver()
    await api.ok("PUT", f"/v1/webhooks/{OWNER}", json={"url": receiver.url()})
    rot = await start(api)
    assert await _deliver(api) == 1
    assert [r.headers["X-Kmsd-Delivery"] for r in receiver.got] == ["1"]
    # By name: the connection goes to the checked address, the Host header keeps the name.
    await api.ok("PUT", f"/v1/webhooks/{OWNER}", json={"url": receiver.url("localhost")})
    await api.ok("POST", f"/v1/rotations/{rot['id']}/abort")
    assert await _deliver(api) == 1
    assert receiver.got[-1].headers["Host"] == f"localhost:{receiver.server.port}"


async def test_a_redirect_is_not_followed(
    make_client: ClientFactory,
    admin: Identity,
    moto_endpoint: str,
    make_receiver: Any,
    db: asyncpg.Connection,
) -> None:
    api = await _api(make_client, admin, moto_endpoint)
    target = await make_receiver()
    redirector = await make_receiver(web.Response(status=302, headers={"Location": target.url()}))
    await api.ok("PUT", f"/v1/webhooks/{OWNER}", json={"url": redirector.url()})
    await start(api)
    assert await _deliver(api) == 0
    assert len(redirector.got) == 1
    assert target.got == []  # the Location was never visited
    error = await _last_error(db)
    assert error is not None
    assert "redirect refused" in error


async def test_a_name_that_now_leads_inside_is_refused_at_delivery(
    make_client: ClientFactory,
    admin: Identity,
    moto_endpoint: str,
    make_receiver: Any,
    db: asyncpg.Connection,
) -> None:
    api = await _api(make_client, admin, moto_endpoint)
    receiver = await make_receiver()
    # Allowed when set (loopback was allowed then) ...
    await api.ok("PUT", f"/v1/webhooks/{OWNER}", json={"url": receiver.url("localhost")})
    await start(api)
    # ... refused at delivery, where the fresh lookup is judged without that allowance.
    assert await _deliver(api, allowed=()) == 0
    assert receiver.got == []
    error = await _last_error(db)
    assert error is not None
    assert "loopback" in error
    assert "'localhost' resolves to" in error
