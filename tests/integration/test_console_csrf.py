"""The writing console's safety: a session cookie alone opens pages and nothing else; the
console's own fetches reach the API with the session's CSRF token, and are the API's calls
(same handler, same access check, same audit row); every page carries the strict headers."""

from __future__ import annotations

import re
import uuid
from typing import Any

import asyncpg
import pytest

from kmsd.http.console.pages import CSP
from tests.integration.conftest import Api, snapshot

PATH = "prod/pay"


async def console(client: Any, api: Api) -> tuple[str, str]:
    """A console session of ``api``'s caller: its cookie and its CSRF token (from the page).
    The client's cookie jar is emptied, so each request names its cookie itself."""
    link = await api.ok("POST", "/v1/console/links")
    async with client.get(link["path"], allow_redirects=False) as opened:
        assert opened.status == 303, await opened.text()
        cookie = opened.cookies["kmsd_console"].value
    client.session.cookie_jar.clear()
    async with client.get("/ui/rotations", headers={"Cookie": f"kmsd_console={cookie}"}) as page:
        assert page.status == 200
        found = re.search(r'<meta name="csrf" content="([0-9a-f]+)">', await page.text())
    assert found is not None
    return cookie, found[1]


def sent(cookie: str, csrf: str | None = None, **more: str) -> dict[str, str]:
    headers = {"Cookie": f"kmsd_console={cookie}", **more}
    if csrf is not None:
        headers["X-Kmsd-Csrf"] = csrf
    return headers


async def test_a_console_fetch_is_the_api_call_itself_audited_as_its_caller(
    client: Any, api: Api, admin: Any
) -> None:
    # The trail is never emptied between tests: a node of this test's own.
    mine = f"prod/console-{uuid.uuid4().hex[:8]}"
    cookie, csrf = await console(client, api)
    same_site = str(client.make_url(""))
    async with client.put(
        f"/v1/nodes/{mine}?parents=true", headers=sent(cookie, csrf, Origin=same_site)
    ) as resp:
        assert resp.status in (200, 201), await resp.text()
    client.session.cookie_jar.clear()
    rows = (await api.ok("GET", f"/v1/audit?path={mine}&action=node.create"))["rows"]
    outcomes = sorted((r["principal"], r["outcome"]) for r in rows)
    assert outcomes == [(admin.arn, "allowed"), (admin.arn, "attempt")]


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("no csrf header", 401),  # a bare cookie opens no API route: no credentials at all
        ("empty csrf", 403),
        ("wrong csrf", 403),
        ("another session's csrf", 403),
        ("another site's origin", 403),
        ("console token as a bearer", 401),
    ],
)
async def test_a_forged_console_write_is_refused_and_changes_nothing(
    client: Any, api: Api, db: asyncpg.Connection, case: str, status: int
) -> None:
    cookie, csrf = await console(client, api)
    _, other_csrf = await console(client, api)
    headers = {
        "no csrf header": sent(cookie),
        "empty csrf": sent(cookie, ""),
        "wrong csrf": sent(cookie, "0" * 40),
        "another session's csrf": sent(cookie, other_csrf),
        "another site's origin": sent(cookie, csrf, Origin="https://evil.example"),
        "console token as a bearer": {"Authorization": f"Bearer {cookie}", "X-Kmsd-Csrf": csrf},
    }[case]
    before = await snapshot(db)
    async with client.put(f"/v1/nodes/{PATH}?parents=true", headers=headers) as resp:
        assert resp.status == status, await resp.text()
        assert resp.content_type == "application/problem+json"
    assert await snapshot(db) == before


async def test_signing_out_needs_the_csrf_token_and_ends_the_session(client: Any, api: Api) -> None:
    cookie, csrf = await console(client, api)
    async with client.post("/ui/logout", headers=sent(cookie)) as refused:
        assert refused.status == 403
    async with client.get("/ui/rotations", headers=sent(cookie)) as still:
        assert still.status == 200  # the refused sign-out changed nothing
    async with client.post("/ui/logout", headers=sent(cookie, csrf), allow_redirects=False) as out:
        assert out.status == 303
        assert out.headers["Location"] == "/ui/signed-out"
    client.session.cookie_jar.clear()
    async with client.get("/ui/rotations", headers=sent(cookie)) as gone:
        assert gone.status == 401


async def test_every_page_has_the_strict_headers_and_no_inline_script_or_style(
    client: Any, api: Api
) -> None:
    await api.ok("PUT", f"/v1/nodes/{PATH}?parents=true")
    await api.put_json(f"{PATH}/db", {"password": "console-canary-value"})
    rot = await api.ok(
        "POST", "/v1/rotations", json={"path": PATH, "name": "db", "value": {"password": "n3w"}}
    )
    cookie, _ = await console(client, api)
    for path in ("/ui/rotations", f"/ui/rotations/{rot['id']}", "/ui/signed-out"):
        async with client.get(path, headers=sent(cookie)) as resp:
            text = await resp.text()
            assert resp.status == 200, path
            assert resp.headers["Content-Security-Policy"] == CSP
            assert "frame-ancestors 'none'" in CSP
            assert "'unsafe-inline'" not in CSP
            assert resp.headers["X-Frame-Options"] == "DENY"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            assert re.search(r"<script(?![^>]*\bsrc=)", text) is None, path
            assert re.search(r"\sstyle=|\son[a-z]+=", text) is None, path
            assert "console-canary-value" not in text
            assert "n3w" not in text


async def test_the_dashboard_offers_only_what_applies_and_only_to_who_may_rotate(
    client: Any, api: Api, reader_api: Api, reader: Any
) -> None:
    await api.ok("PUT", f"/v1/nodes/{PATH}?parents=true")
    await api.put_json(f"{PATH}/db", {"password": "p"})
    rot = await api.ok(
        "POST", "/v1/rotations", json={"path": PATH, "name": "db", "value": {"password": "n"}}
    )
    cookie, _ = await console(client, api)
    async with client.get(f"/ui/rotations/{rot['id']}", headers=sent(cookie)) as resp:
        text = await resp.text()
    offered = re.findall(r'data-api="POST /v1/rotations/\d+/(\w+)"', text)
    assert offered == ["advance", "pause", "abort"]  # pending: no resume, no rollback
    assert "promote" in text  # the confirmation says what advance will do
    await api.grant(reader.arn, PATH, "view")
    viewer_cookie, _ = await console(client, reader_api)
    async with client.get(f"/ui/rotations/{rot['id']}", headers=sent(viewer_cookie)) as resp:
        assert re.findall(r"data-api=\"POST /v1/rotations", await resp.text()) == []


async def test_a_refused_page_has_the_strict_headers_too(client: Any) -> None:
    async with client.get("/ui/rotations") as resp:  # no session: refused by a middleware
        assert resp.status == 401
        assert resp.content_type == "application/problem+json"
        assert resp.headers["Content-Security-Policy"] == CSP
        assert resp.headers["X-Frame-Options"] == "DENY"
