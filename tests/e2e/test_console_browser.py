"""The console in a real browser: Playwright driving Debian's Chromium (no browser download)
against a kmsd replica, PostgreSQL, moto's server and a live kmsagent.

An operator signs in through a one-time link, runs a rotation from its dashboard (the gate
fills as the agent adopts, each command confirmed), a person with ``view`` sees the same page
without a single control and a request forged from their own session is refused; no value
written appears in any page or response. Screenshots land in the test's folder, or in
``$KMSD_CONSOLE_SCREENSHOTS`` (docs/console/ takes them from there).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kmsd.http.console.pages import CSP
from tests.conftest import Identity
from tests.e2e.harness import AgentProcess, Ops, Replica, credentials_file

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OLD, NEW = "console-old-canary-4471", "console-new-canary-9313"
DEADLINE_MS = 30_000


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); .ci/run has it")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


class Seen:
    """Every response a page received: its URL, headers and (for documents) its body."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, str]] = []
        self.documents: list[tuple[str, dict[str, str]]] = []

    async def note(self, response: Any) -> None:
        kind = response.headers.get("content-type", "")
        if response.request.resource_type == "document":
            self.documents.append((response.url, response.headers))
        if "event-stream" in kind or response.status in (301, 302, 303):
            return  # a stream still open; a redirect has no body to read
        try:
            self.bodies.append((response.url, (await response.body()).decode("utf-8", "replace")))
        except Exception:
            return


def screenshot_dir(tmp_path: Path) -> Path:
    where = Path(os.environ.get("KMSD_CONSOLE_SCREENSHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where


async def open_console(browser: Any, ops: Ops, seen: Seen, rotation: int | None = None) -> Any:
    """A browser context of its own (its own cookie), signed in with a one-time link."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(DEADLINE_MS)
    page.on("response", lambda r: asyncio.ensure_future(seen.note(r)))
    page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
    where = ("--rotation", str(rotation)) if rotation is not None else ()
    link = await asyncio.to_thread(ops.json, "console", *where)
    await page.goto(link["url"])
    return page


async def test_a_rotation_run_from_the_console_while_a_viewer_can_only_watch(
    chromium: Any,
    env: dict[str, str],
    admin: Identity,
    make_user: Any,
    moto_endpoint: str,
    tmp_path: Path,
) -> None:
    kmsd = await asyncio.to_thread(Replica, {**env, "KMSD_ROTATION_TICK": "0.2"}, tmp_path)
    ops = Ops(kmsd, admin, moto_endpoint)
    agent: AgentProcess | None = None
    shots = screenshot_dir(tmp_path)
    seen = Seen()
    try:
        host: Identity = make_user(f"con-{tmp_path.name[-10:]}")
        viewer: Identity = make_user(f"view-{tmp_path.name[-10:]}")
        for step in (
            ("node", "create", "prod/shop", "--parents"),
            ("secret", "put", "prod/shop", "db", "--json", json.dumps({"password": OLD})),
            ("app", "bind", "prod/shop", "--role", host.arn),
            ("access", "grant", viewer.arn, "prod/shop", "view"),
        ):
            await asyncio.to_thread(ops, *step)
        workdir = tmp_path / "shop-1"
        workdir.mkdir()
        credentials_file(workdir / "credentials", host, 0o600)
        agent = AgentProcess(
            kmsd_addr=kmsd.addr,
            moto_endpoint=moto_endpoint,
            paths=["prod/shop"],
            workdir=workdir,
            args=[
                *("--credentials", "file"),
                *("--credentials-file", str(workdir / "credentials")),
                *("--instance-id", "shop-1"),
            ],
        )
        await asyncio.to_thread(agent.wait_ready)
        # Started from the console: the value typed goes to the API, and the form forgets it.
        page = await open_console(chromium, ops, seen)
        await page.goto(f"{kmsd.addr}/ui/rotations")
        form = page.locator("#start-rotation")
        await form.locator("[name=path]").fill("prod/shop")
        await form.locator("[name=name]").fill("db")
        # JSON that does not parse: refused in the page, the text neither kept nor quoted.
        await form.locator("[name=value]").fill('{"password": "' + NEW)
        await form.locator("button[type=submit]").click()
        problem = form.locator(".problem")
        await problem.filter(has_text="not valid JSON").wait_for()
        assert NEW not in await problem.inner_text()
        assert await form.locator("[name=value]").input_value() == ""
        await form.locator("[name=value]").fill(json.dumps({"password": NEW}))
        await form.locator("button[type=submit]").click()
        await page.locator("a", has_text="#1").click()
        rot = await asyncio.to_thread(ops.json, "rotate", "status", "1")
        assert rot["phase"] == "pending"
        gate = page.locator("#gate-count")
        await gate.filter(has_text=re.compile(r"1 / 1 live.*met")).wait_for()
        await page.screenshot(path=str(shots / "rotation.png"), full_page=True)

        # Pause and resume: each asks first, then the page shows what happened.
        await page.locator("#controls button", has_text="pause").click()
        await page.locator("span.tag", has_text="paused").wait_for()
        await page.locator("#controls button", has_text="resume").click()
        await page.locator("#controls button", has_text="pause").wait_for()
        # Advance: gate 1 is met, so the new version is promoted; gate 2 then waits on the
        # agent serving it as current.
        await page.locator("#controls button", has_text="advance").click()
        await page.locator(".phase.on", has_text="promoted").wait_for()
        await gate.filter(has_text=re.compile(r"1 / 1 live.*met")).wait_for()
        assert "rollback" in (await page.locator("#controls").inner_text()).lower()

        # The viewer: the same page, no control; a request forged from their own session,
        # with their own CSRF token, is refused by the server.
        watching = await open_console(chromium, Ops(kmsd, viewer, moto_endpoint), seen, rot["id"])
        await watching.locator(".phase.on", has_text="promoted").wait_for()
        assert await watching.locator("#controls").count() == 0
        assert await watching.locator("button[data-api*='/v1/rotations']").count() == 0
        forged = await watching.evaluate(
            """async id => {
                const csrf = document.querySelector('meta[name="csrf"]').content;
                const r = await fetch(`/v1/rotations/${id}/rollback`, {
                    method: "POST", headers: {"X-Kmsd-Csrf": csrf}});
                return r.status;
            }""",
            rot["id"],
        )
        assert forged == 403
        doc = await asyncio.to_thread(ops.json, "rotate", "status", str(rot["id"]))
        assert doc["phase"] == "promoted"  # the forged rollback changed nothing

        # Every section, as the operator sees it once the rotation is under way.
        for name, path in (
            ("tree", "/ui/tree"),
            ("node", "/ui/node/prod/shop"),
            ("secret", "/ui/secret/prod/shop/db"),
            ("access", "/ui/access?path=prod/shop"),
            ("audit", "/ui/audit?path=prod/shop"),
            ("fleet", "/ui/fleet"),
            ("expiring", "/ui/expiring"),
        ):
            answer = await page.goto(f"{kmsd.addr}{path}")
            assert answer is not None
            assert answer.status == 200, path
            await page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

        assert seen.documents, "no page was loaded"
        for url, headers in seen.documents:
            if "/ui/login" in url:
                continue  # the redirect's own answer
            assert headers.get("content-security-policy") == CSP, url
        for url, body in seen.bodies:
            assert OLD not in body, url
            assert NEW not in body, url
        source = await page.content() + await watching.content()
        assert OLD not in source
        assert NEW not in source
    finally:
        if agent is not None:
            await asyncio.to_thread(agent.stop)
        await asyncio.to_thread(kmsd.stop)
