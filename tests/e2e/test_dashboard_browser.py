"""The rotation dashboard in headless Chromium (Debian ``chromium``), driven over the DevTools
protocol: signed in by a one-time console link, it shows the gate's progress and redraws when an
agent adopts the pending version - no reload. A screenshot lands in the test's temp folder."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Identity
from tests.e2e.harness import AgentProcess, Ops, Replica, credentials_file, wait_until

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DEADLINE_S = 30.0


class Browser:
    """One headless Chromium page, spoken to with the DevTools protocol over a websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> Any:
        msg_id = next(self._ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        async with asyncio.timeout(DEADLINE_S):
            while True:
                msg = await self.ws.receive_json()
                if msg.get("id") == msg_id:
                    if "error" in msg:
                        raise AssertionError(f"{method}: {msg['error']}")
                    return msg.get("result", {})

    async def text_of(self, element_id: str) -> str:
        result = await self.call(
            "Runtime.evaluate",
            expression=f"(document.getElementById({json.dumps(element_id)}) || {{}}).innerText",
            returnByValue=True,
        )
        return str(result.get("result", {}).get("value") or "")

    async def until_text(self, element_id: str, pattern: str) -> str:
        text = ""
        try:
            async with asyncio.timeout(DEADLINE_S):
                while not re.search(  # noqa: ASYNC110 - the page lives in another process
                    pattern, text := await self.text_of(element_id)
                ):
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"#{element_id} never matched {pattern!r}: {text!r}") from None
        return text


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); .ci/run has it")
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--remote-debugging-port=0",
        "about:blank",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(DEADLINE_S):
            while b"DevTools listening on" not in (line := await proc.stderr.readline()):
                assert line, "chromium exited before it listened"
        port = re.search(rb"127\.0\.0\.1:(\d+)/", line)[1].decode()  # type: ignore[index]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                page = next(t for t in await resp.json() if t["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield Browser(ws)
    finally:
        proc.kill()
        await proc.wait()


async def test_the_dashboard_shows_gate_progress_and_redraws_when_an_agent_adopts(
    browser: Browser,
    env: dict[str, str],
    admin: Identity,
    make_user: Any,
    moto_endpoint: str,
    tmp_path: Path,
) -> None:
    kmsd = await asyncio.to_thread(Replica, {**env, "KMSD_ROTATION_TICK": "0.2"}, tmp_path)
    ops = Ops(kmsd, admin, moto_endpoint)
    agents: list[AgentProcess] = []
    try:
        host: Identity = make_user(f"dash-{tmp_path.name[-10:]}")
        for step in (
            ("node", "create", "prod/shop", "--parents"),
            ("secret", "put", "prod/shop", "db", "--json", '{"password": "old"}'),
            ("app", "bind", "prod/shop", "--role", host.arn),
        ):
            await asyncio.to_thread(ops, *step)
        for name in ("shop-1", "shop-2"):
            workdir = tmp_path / name
            workdir.mkdir()
            credentials_file(workdir / "credentials", host, 0o600)
            agents.append(
                AgentProcess(
                    kmsd_addr=kmsd.addr,
                    moto_endpoint=moto_endpoint,
                    paths=["prod/shop"],
                    workdir=workdir,
                    args=[
                        *("--credentials", "file"),
                        *("--credentials-file", str(workdir / "credentials")),
                        *("--instance-id", name),
                    ],
                )
            )
        for agent in agents:
            await asyncio.to_thread(agent.wait_ready)

        def both_reported() -> bool:
            doc = ops.json("adoption", "prod/shop")
            return {i["instance_id"] for i in doc["instances"]} == {"shop-1", "shop-2"}

        # kmsd knows an instance from its first poll's report: both, before one goes away.
        await asyncio.to_thread(wait_until, both_reported, "both agents' first reports")
        late = agents[1]
        await asyncio.to_thread(late.stop)  # shop-2 is away when the rotation starts
        rot = await asyncio.to_thread(
            ops.json, "rotate", "start", "prod/shop", "db", "--value", '{"password": "new"}'
        )
        link = await asyncio.to_thread(ops.json, "console", "--rotation", str(rot["id"]))

        await browser.call("Page.enable")
        await browser.call("Page.navigate", url=link["url"])
        first = await browser.until_text("gate-count", r"1 / 2 live")
        assert "stale" in first
        assert "shop-2" in await browser.text_of("gate")  # the straggler is named
        assert "start" in await browser.text_of("history")

        await asyncio.to_thread(late.start)  # shop-2 comes back and fetches the pending version
        after = await browser.until_text("gate-count", r"2 / 2 live.*met")
        assert "2 / 2" in after
        shot = await browser.call("Page.captureScreenshot", format="png")
        png = tmp_path / "dashboard.png"
        png.write_bytes(base64.b64decode(shot["data"]))
        assert png.read_bytes().startswith(b"\x89PNG")
    finally:
        for agent in agents:
            await asyncio.to_thread(agent.stop)
        await asyncio.to_thread(kmsd.stop)
