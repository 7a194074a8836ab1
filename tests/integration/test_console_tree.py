"""The console's tree, node and secret pages (real PostgreSQL and moto): what a viewer sees, what
never appears on a page (a value), and who is offered, or refused, a change."""

from __future__ import annotations

import base64
import html
import re
from typing import Any

import asyncpg
import boto3
import orjson
import pytest

from kmsd.http.console.pages import CSP
from tests.conftest import Identity
from tests.integration.conftest import Api

APP = "prod/pay"
NODE = "prod/pay/us-east-1"
# A value no page may ever show: kmsd never holds one, so no page can.
VALUE = "s3cr3t-zebra-4417"


async def _console(api: Api) -> None:
    """Open ``api``'s console session: the cookie lands in its client's jar."""
    link = await api.ok("POST", "/v1/console/links")
    async with api.client.get(link["path"], allow_redirects=False) as opened:
        assert opened.status in (302, 303), opened.status


async def _page(api: Api, path: str, status: int = 200) -> str:
    """A page opened with the console cookie alone; every answer carries the strict CSP."""
    async with api.client.get(path) as resp:
        text = await resp.text()
        assert resp.status == status, (path, resp.status, text[:300])
        if status == 200:
            assert resp.headers["Content-Type"].startswith("text/html")
            assert resp.headers["Content-Security-Policy"] == CSP
            assert resp.headers["X-Frame-Options"] == "DENY"
        else:
            assert resp.headers["Content-Type"].startswith("application/problem+json")
        return text


def _csrf(text: str) -> str:
    found = re.search(r'<meta name="csrf" content="([0-9a-f]+)">', text)
    assert found is not None
    return found[1]


async def _seed(api: Api) -> None:
    await api.ok("PUT", f"/v1/nodes/{NODE}?parents=true")
    await api.ok("PUT", "/v1/nodes/prod/billing")
    await api.put_json(f"{APP}/db", {"password": VALUE}, description="the app's database")
    await api.put_json(f"{NODE}/db", {"password": VALUE + "-regional"}, tags={"team": "pay"})
    await api.put_json(f"{APP}/api", {"key": VALUE})
    await api.ok("POST", f"/v1/generate/{APP}/sig", json={"use": "signing"})
    await api.ok("POST", "/v1/shares", json={"secret": f"{APP}/api", "to": "prod/billing"})
    await api.ok("PUT", "/v1/refs/prod/billing/pay-api", json={"target": f"{APP}/api"})
    binary = {"kind": "binary", "value_b64": base64.b64encode(VALUE.encode()).decode()}
    await api.ok("PUT", f"/v1/secrets/{NODE}/tls", json=binary)


async def _datakey(api: Api, moto_endpoint: str) -> None:
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name="us-east-1")
    cmk = kms.create_key()["KeyMetadata"]["Arn"]
    await api.ok("POST", f"/v1/datakeys/{APP}/files", json={"cmk": cmk, "period_days": 30})


@pytest.mark.usefixtures("db")
async def test_the_tree_and_a_nodes_override_chain_show_metadata_never_a_value(
    api: Api, moto_endpoint: str
) -> None:
    await _seed(api)
    await _datakey(api, moto_endpoint)
    await _console(api)
    tree = await _page(api, "/ui/tree")
    for path in ("prod", APP, NODE, "prod/billing"):
        assert f'href="/ui/node/{path}"' in tree
    node = await _page(api, f"/ui/node/{NODE}")
    # db at the region overrides db at the application: the chain says so, struck through.
    chain = re.search(
        r'<div class="chain entry">\s*<div class="link won"><b>db</b>(.*?)</div>\s*'
        r'<div class="link overridden">db at ([^ <]+)',
        node,
        re.S,
    )
    assert chain is not None, node
    assert f'href="/ui/secret/{NODE}/db"' in chain[1]
    assert chain[2] == APP
    assert f'href="/ui/secret/{APP}/api"' in node  # inherited, not overridden
    app_page = await _page(api, f"/ui/node/{APP}")
    assert "prod/billing" in app_page.split('id="shares"')[1]  # shared with
    assert "pay-api" in app_page.split('id="refs-in"')[1]  # and referenced there
    billing = await _page(api, "/ui/node/prod/billing")
    assert f"{APP}/api" in billing.split('id="refs-out"')[1]
    secret = await _page(api, f"/ui/secret/{APP}/sig")
    assert "BEGIN PUBLIC KEY" in secret
    assert "signing" in secret
    # A generated key is replaced by kmsd's own generation, never by a value typed in.
    assert 'data-api="POST /v1/generate/prod/pay/sig"' in secret
    assert "data-secret" not in secret
    regional = await _page(api, f"/ui/secret/{NODE}/db")
    db_page = await _page(api, f"/ui/secret/{APP}/db")
    assert "recovery window" in db_page
    assert "data-secret" in db_page  # the write-only entry is offered to an editor
    assert "the app&#39;s database" in db_page
    namespace = await _page(api, "/ui/node/prod")
    assert 'id="effective"' not in namespace  # effective sets start at an application
    assert f'href="/ui/node/{APP}"' in namespace
    binary = await _page(api, f"/ui/secret/{NODE}/tls")
    assert 'type="file" name="value_b64" data-type="b64" data-secret' in binary
    datakey = await _page(api, f"/ui/secret/{APP}/files")
    assert "30 days" in datakey
    assert 'data-api="POST /v1/datakeys/prod/pay/files"' in datakey
    pages = [tree, node, app_page, billing, secret, regional, db_page, namespace, binary, datakey]
    for text in pages:
        assert VALUE not in text
        assert base64.b64encode(VALUE.encode()).decode() not in text
        assert "PRIVATE KEY" not in text
        assert "style=" not in text  # the CSP forbids inline style: none is written
        assert "<script>" not in text


@pytest.mark.usefixtures("db")
async def test_unknown_and_invisible_paths_are_the_same_404(
    api: Api, reader_api: Api, reader: Identity
) -> None:
    await _seed(api)
    await api.grant(reader.arn, "prod/billing", "view")
    await _console(reader_api)
    tree = await _page(reader_api, "/ui/tree")
    assert 'href="/ui/node/prod/billing"' in tree
    assert f'href="/ui/node/{APP}"' not in tree
    hidden = await _page(reader_api, f"/ui/node/{APP}", 404)
    missing = await _page(reader_api, "/ui/node/prod/nothing", 404)

    def same(text: str, path: str) -> dict[str, Any]:
        doc: dict[str, Any] = orjson.loads(text.replace(path, "X"))
        doc.pop("request_id", None)
        return doc

    assert same(hidden, APP) == same(missing, "prod/nothing")
    await _page(reader_api, f"/ui/secret/{APP}/db", 404)
    await _page(reader_api, "/ui/secret/prod/billing/nothing", 404)


@pytest.mark.usefixtures("db")
async def test_a_viewer_is_offered_no_change_and_the_api_refuses_one(
    api: Api, reader_api: Api, reader: Identity, db: asyncpg.Connection
) -> None:
    await _seed(api)
    await api.grant(reader.arn, APP, "view")
    await _console(reader_api)
    node = await _page(reader_api, f"/ui/node/{APP}")
    secret = await _page(reader_api, f"/ui/secret/{APP}/db")
    for text in (node, secret):
        assert 'id="edit"' not in text
        assert "data-secret" not in text
        assert 'data-api="PUT' not in text
        assert 'data-api="DELETE' not in text
        assert VALUE not in text
    csrf = _csrf(node)
    before = await db.fetchval("SELECT count(*) FROM secret_versions")
    client: Any = reader_api.client
    # The viewer's own session and CSRF token: the API decides, and refuses.
    headers = {"X-Kmsd-Csrf": csrf}
    body = {"kind": "json", "value": {"password": "mine"}}
    async with client.put(f"/v1/secrets/{APP}/db", json=body, headers=headers) as resp:
        assert resp.status in (403, 404), resp.status
    share = {"secret": f"{APP}/db", "to": "prod/billing"}
    async with client.post("/v1/shares", json=share, headers=headers) as resp:
        assert resp.status in (403, 404), resp.status
    async with client.put(f"/v1/nodes/{APP}/child", headers=headers) as resp:
        assert resp.status in (403, 404), resp.status
    assert await db.fetchval("SELECT count(*) FROM secret_versions") == before


@pytest.mark.usefixtures("db")
async def test_an_editors_cookie_without_its_csrf_token_changes_nothing(
    api: Api, db: asyncpg.Connection
) -> None:
    await _seed(api)
    await _console(api)
    node = await _page(api, f"/ui/node/{APP}")
    assert 'data-api="PUT /v1/nodes/prod/pay/{child}"' in node  # offered to an editor
    client: Any = api.client
    share = {"secret": f"{APP}/db", "to": "prod/billing"}
    # The cookie alone (no Authorization, no CSRF header) opens pages, never the API.
    async with client.post("/v1/shares", json=share) as resp:
        assert resp.status in (401, 403), resp.status
    async with client.post("/v1/shares", json=share, headers={"X-Kmsd-Csrf": "0" * 64}) as resp:
        assert resp.status == 403, resp.status
    assert await db.fetchval("SELECT count(*) FROM shares") == 1
    # With its token, the same call passes the same handler as kmsctl.
    headers = {"X-Kmsd-Csrf": _csrf(node)}
    async with client.post("/v1/shares", json=share, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
    assert await db.fetchval("SELECT count(*) FROM shares") == 2


def _actions(text: str) -> set[str]:
    """Every ``data-api`` a page offers, as console.js reads it."""
    return {html.unescape(a) for a in re.findall(r'data-api="([^"]+)"', text)}


async def _send(api: Api, csrf: str, action: str, json: Any = None, **fields: str) -> Any:
    """Call the API as console.js does: placeholders filled, cookie plus the CSRF token."""
    method, url = action.split(" ")
    for key, val in fields.items():
        url = url.replace("{" + key + "}", val)
    async with api.client.request(
        method, url, json=json, headers={"X-Kmsd-Csrf": csrf}, allow_redirects=False
    ) as resp:
        body = await resp.json(content_type=None)
        return resp.status, body


@pytest.mark.usefixtures("db")
async def test_each_form_calls_the_api_as_it_is(api: Api) -> None:
    """The forms' data-api and fields are what the API takes: driven here as console.js would."""
    await _seed(api)
    await _console(api)
    pay = await _page(api, f"/ui/node/{APP}")
    csrf = _csrf(pay)
    offered = _actions(pay)
    for action in (
        f"PUT /v1/nodes/{APP}/{{child}}",
        f"PUT /v1/secrets/{APP}/{{name}}",
        f"POST /v1/generate/{APP}/{{name}}",
        "POST /v1/shares",
        f"PUT /v1/refs/{APP}/{{name}}",
        f"DELETE /v1/shares?secret={APP}/api&to=prod/billing",
    ):
        assert action in offered, (action, offered)
    status, _ = await _send(api, csrf, f"PUT /v1/nodes/{APP}/{{child}}", child="eu-west-1")
    assert status == 201
    body = {"kind": "json", "value": {"token": VALUE}, "description": "web"}
    status, _ = await _send(api, csrf, f"PUT /v1/secrets/{APP}/{{name}}", body, name="web")
    assert status == 201
    gen = {"use": "password"}
    status, _ = await _send(api, csrf, f"POST /v1/generate/{APP}/{{name}}", gen, name="pw")
    assert status == 201
    share = {"secret": f"{APP}/web", "to": "prod/billing"}
    assert (await _send(api, csrf, "POST /v1/shares", share))[0] == 201
    billing = await _page(api, "/ui/node/prod/billing")
    assert f"{APP}/web" in billing.split('id="shared-with"')[1]  # offered as a target
    ref = {"target": f"{APP}/web"}
    status, _ = await _send(api, csrf, "PUT /v1/refs/prod/billing/{name}", ref, name="web")
    assert status == 201
    # Unsharing what is still referenced is refused, naming the references.
    unshare = f"DELETE /v1/shares?secret={APP}/api&to=prod/billing"
    assert (await _send(api, csrf, unshare))[0] == 409
    billing = await _page(api, "/ui/node/prod/billing")
    assert "DELETE /v1/refs/prod/billing/pay-api" in _actions(billing)
    assert (await _send(api, csrf, "DELETE /v1/refs/prod/billing/pay-api"))[0] == 200
    assert (await _send(api, csrf, unshare))[0] == 200
    sig = await _page(api, f"/ui/secret/{APP}/sig")
    again = re.search(r'data-api="POST /v1/generate/prod/pay/sig" data-body="([^"]+)"', sig)
    assert again is not None
    regenerate = orjson.loads(html.unescape(again[1]))
    status, _ = await _send(api, csrf, f"POST /v1/generate/{APP}/sig", regenerate)
    assert status == 200
    web = await _page(api, f"/ui/secret/{APP}/web")
    assert f"DELETE /v1/secrets/{APP}/web" in _actions(web)
    assert "web" in web.split('id="meta"')[1]  # the description
    assert "recovery window" in web
    assert (await _send(api, csrf, "DELETE /v1/refs/prod/billing/web"))[0] == 200
    assert (await _send(api, csrf, f"DELETE /v1/secrets/{APP}/web"))[0] == 200
    child = await _page(api, f"/ui/node/{APP}/eu-west-1")
    assert f"DELETE /v1/nodes/{APP}/eu-west-1" in _actions(child)
    assert (await _send(api, csrf, f"DELETE /v1/nodes/{APP}/eu-west-1"))[0] == 200
    for text in (pay, billing, sig, web, child):
        assert VALUE not in text
