"""The console's Access, Audit, Fleet and Expiring pages, over a real kmsd.

Each person signs in with a one-time link of their own and sends their cookie explicitly, so
one test holds two console sessions side by side.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from kmsd.domain.bearer import CSRF_HEADER
from kmsd.http.console.audit import PAGE_SIZE
from kmsd.http.console.pages import COOKIE, CSP
from kmsd.keys import POOL
from tests.conftest import Identity, _fresh_database
from tests.integration.conftest import Api, ClientFactory, sign_in

Client = TestClient[web.Request, web.Application]
APP, NODE = "prod/pay", "prod/pay/us-east-1"


class Console:
    """One console session: its cookie, sent explicitly, and its CSRF token."""

    def __init__(self, client: Client, cookie: str) -> None:
        self.client = client
        self.cookie = cookie

    async def get(self, url: str, status: int = 200) -> str:
        async with self.client.get(
            url, headers={"Cookie": f"{COOKIE}={self.cookie}"}, allow_redirects=False
        ) as resp:
            text = await resp.text()
            assert resp.status == status, (url, resp.status, text[:500])
            if status == 200:  # a refusal is problem+json from the error middleware
                assert resp.headers["Content-Security-Policy"] == CSP
            return text

    async def csrf(self) -> str:
        found = re.search(r'<meta name="csrf" content="([^"]+)">', await self.get("/ui/fleet"))
        assert found is not None
        return found[1]

    async def call(self, method: str, url: str, csrf: str, **kw: Any) -> tuple[int, Any]:
        headers = {"Cookie": f"{COOKIE}={self.cookie}", CSRF_HEADER: csrf}
        async with self.client.request(method, url, headers=headers, **kw) as resp:
            return resp.status, await resp.json(content_type=None)


async def console(api: Api) -> Console:
    link = await api.ok("POST", "/v1/console/links")
    async with api.client.get(link["path"], allow_redirects=False) as resp:
        assert resp.status == 303
        cookie = resp.cookies[COOKIE].value
    api.client.session.cookie_jar.clear()  # each session is sent explicitly from here on
    return Console(api.client, cookie)


@pytest.fixture
async def world(api: Api) -> dict[str, Any]:
    return await build_world(api)


@pytest.fixture
async def own_api(
    make_client: ClientFactory, pg_server_dsn: str, admin: Identity, moto_endpoint: str
) -> Api:
    """An admin on a kmsd with a database of its own: the audit trail is never emptied between
    tests, so what a search finds (or a verification checks) must be this test's alone."""
    dsn = await _fresh_database(pg_server_dsn, f"kmsd_ops_{uuid.uuid4().hex[:8]}")
    return await sign_in(await make_client(database_url=dsn), admin, moto_endpoint)


async def build_world(api: Api) -> dict[str, Any]:
    """A small tree: an application, a cluster, a hand-made and a generated secret, an
    instance and an observer reporting, a rotation waiting on them."""
    await api.ok("PUT", f"/v1/nodes/{NODE}?parents=true")
    await api.put_json(f"{APP}/db", {"user": "u", "password": "p"})
    await api.ok("POST", f"/v1/generate/{APP}/sig", json={"use": "signing"})
    doc = await api.effective(NODE)
    held = {s["name"]: s["versions"][0]["version_id"] for s in doc["secrets"]}
    watch = {"path": NODE, "path_version": doc["path_version"], "instance_id": "i-1"}
    reads = {"processes": {"4242@1": {"db": held["db"]}}}
    observer = {**watch, "instance_id": "kmsctl-1", "role": "observer", "held": {}}
    for report in ({**watch, "held": held, **reads}, observer):
        status, _ = await api.call("POST", "/v1/watch?timeout=0", json=report)
        assert status == 304  # up to date; the report is kept all the same
    rotation = {"path": APP, "name": "db", "value": {"user": "u", "password": "q"}}
    rot = await api.ok("POST", "/v1/rotations", json=rotation)
    return {"held": held, "rotation": rot["id"]}


async def test_every_page_renders_for_an_admin_with_its_data(
    api: Api, world: dict[str, Any], reader: Identity
) -> None:
    await api.grant(reader.arn, APP, "read")
    admin = await console(api)
    access = await admin.get(f"/ui/access?path={APP}")
    assert reader.arn in access
    assert 'data-api="POST /v1/bindings"' in access
    assert re.search(r'data-api="DELETE /v1/bindings/\d+"', access)
    assert 'data-copy="#policy"' in access
    assert '<pre id="policy">' in access
    assert 'id="drift"' in access  # never fetched through the API: kmsd cannot vouch for it
    assert "No policy has been fetched" in access
    await api.ok("GET", f"/v1/iam-policy/app/{APP}")
    assert "still covers" in await admin.get(f"/ui/access?path={APP}")
    await api.put_json(f"{NODE}/extra", {"k": "v"})
    after = await admin.get(f"/ui/access?path={APP}")
    assert f"<code>{NODE}/extra</code>" in after  # made since the fetch
    assert "/v1/bindings" in await admin.get("/ui/access")  # the whole tree
    await admin.get(f"/ui/access?path={NODE}")
    last = "SELECT target, outcome FROM audit_log ORDER BY seq DESC LIMIT 1"
    row = await api.client.app[POOL].fetchrow(last)
    assert dict(row) == {"target": NODE, "outcome": "allowed"}  # a view, audited by its path

    fleet = await admin.get("/ui/fleet")
    assert "i-1" in fleet
    assert world["held"]["db"] in fleet
    assert "4242@1" in fleet  # per-process reads
    assert "kmsctl-1" in fleet  # the observer, listed apart
    assert f"straggler of #{world['rotation']}" in fleet
    assert re.search(r'<tr class="warn">\s*<td>i-1</td>', fleet)

    expiring = await admin.get("/ui/expiring?days=3650")
    manual, renewed = expiring.split('id="renewed"')
    assert f"{APP}/<b>db</b>" in manual
    assert f"{APP}/<b>sig</b>" in renewed
    assert "renewed from" in renewed
    assert "renewed from" not in manual  # nothing renews a hand-made secret

    assert "binding.grant" in await admin.get("/ui/audit")


async def test_the_audit_search_finds_the_action_just_taken(own_api: Api, reader: Identity) -> None:
    api = own_api
    await build_world(api)
    admin = await console(api)
    await api.grant(reader.arn, NODE, "view")
    found = await admin.get("/ui/audit?action=binding.grant")
    rows = re.findall(r"<td>(binding\.[a-z]+|rotation\.[a-z]+|secret\.[a-z]+)</td>", found)
    assert rows
    assert set(rows) == {"binding.grant"}
    assert NODE in found
    assert "rotation.start" in await admin.get(f"/ui/audit?path={APP}&action=rotation.start")
    assert "no rows match" in await admin.get("/ui/audit?action=binding.grant&outcome=denied")
    assert "no rows match" in await admin.get(
        "/ui/audit?action=binding.grant&until=2000-01-01T00:00:00Z"
    )
    principal = await admin.get(f"/ui/audit?principal={reader.arn}")
    assert "no rows match" in principal  # the reader has done nothing yet
    for _ in range(PAGE_SIZE):  # enough rows for a second page
        await api.ok("GET", "/v1/auth/whoami")
    count = await api.client.app[POOL].fetchval("SELECT count(*) FROM audit_log")
    assert count > PAGE_SIZE
    first = await admin.get("/ui/audit")
    older = re.search(r'<a id="next" href="([^"]+)">', first)
    assert older is not None
    second = await admin.get(older[1].replace("&amp;", "&"))
    seqs = [int(s) for s in re.findall(r"<tr>\s*<td>(\d+)</td>", first + second)]
    assert seqs == sorted(seqs, reverse=True)
    assert len(seqs) == len(set(seqs))


async def test_verify_shows_the_first_broken_row(own_api: Api) -> None:
    admin = await console(own_api)
    await own_api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    intact = await admin.get("/ui/audit?verify=1")
    assert "<b>Intact</b>" in intact
    pool = own_api.client.app[POOL]
    async with pool.acquire() as conn:  # a superuser turns the trigger off, rewrites history
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete")
        await conn.execute("UPDATE audit_log SET principal = 'someone-else' WHERE seq = 3")
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_delete")
    broken = await admin.get("/ui/audit?verify=1&action=node.create")
    assert "<b>Broken</b> at row #3" in broken
    shown = re.search(r'id="verified">(.*?)</div>', broken, re.S)
    assert shown is not None
    assert "<code>someone-else</code>" in shown[1]
    assert 'value="node.create"' in broken  # the search stays as it was


async def test_a_viewer_sees_no_grant_forms_and_cannot_forge_a_revoke(
    api: Api, world: dict[str, Any], reader: Identity, moto_endpoint: str
) -> None:
    binding = await api.grant(reader.arn, APP, "view")
    viewer = await console(await sign_in(api.client, reader, moto_endpoint))
    page = await viewer.get(f"/ui/access?path={APP}")
    assert reader.arn in page
    assert "data-api" not in page.replace('data-api="POST /ui/logout"', "")
    csrf = await viewer.csrf()
    status, problem = await viewer.call("DELETE", f"/v1/bindings/{binding['id']}", csrf)
    assert status == 403, problem
    assert binding["id"] in [b["id"] for b in (await api.ok("GET", "/v1/bindings"))["bindings"]]
    status, problem = await viewer.call(
        "POST",
        "/v1/bindings",
        csrf,
        json={"principal": reader.arn, "path": APP, "permission": "admin"},
    )
    assert status == 403, problem
    whole = await viewer.get("/ui/audit")  # the whole trail is for admins: only the form
    assert 'id="need-path"' in whole
    assert 'id="rows"' not in whole
    assert 'id="need-path"' in await viewer.get(f"/ui/audit?principal={reader.arn}")
    assert f"<code>{APP}</code>" in await viewer.get("/ui/access")  # theirs, not a refusal
    await viewer.get(f"/ui/audit?path={APP}")
    await viewer.get("/ui/audit?path=prod/billing", status=403)
    await viewer.get(f"/ui/audit?path={APP}&verify=1", status=403)
    assert "i-1" in await viewer.get("/ui/fleet")
    await viewer.get("/ui/access?path=prod", status=403)


async def test_another_sessions_csrf_token_is_refused(
    api: Api, world: dict[str, Any], reader: Identity, moto_endpoint: str
) -> None:
    binding = await api.grant(reader.arn, APP, "view")
    admin = await console(api)
    viewer = await console(await sign_in(api.client, reader, moto_endpoint))
    theirs = await viewer.csrf()
    status, problem = await admin.call("DELETE", f"/v1/bindings/{binding['id']}", theirs)
    assert status == 403, problem
    assert "CSRF" in problem["detail"]
    status, problem = await admin.call(
        "DELETE", f"/v1/bindings/{binding['id']}", await admin.csrf()
    )
    assert status == 200, problem


@pytest.mark.parametrize("url", ["/ui/access", "/ui/audit", "/ui/fleet", "/ui/expiring"])
async def test_each_page_carries_the_csp_and_needs_a_session(
    api: Api, world: dict[str, Any], url: str
) -> None:
    admin = await console(api)
    page = await admin.get(url)  # asserts the CSP
    assert " style=" not in page
    assert "<script>" not in page
    async with api.client.get(url, allow_redirects=False) as resp:
        assert resp.status == 401
