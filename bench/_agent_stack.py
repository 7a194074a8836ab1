"""What every scenario of ``agent.py`` stands on: ``kmsd dev``, the applications, the hosts'
IAM user and its credentials file, kmsd's API and metrics, and the agents started so far.

``setup`` makes two applications (``APP``: 3 secrets, ``RSS_APP``: filled by the RSS scenario),
an IAM user in moto for the hosts with a read binding on both, and its keys in a credentials
file (mode 0600), as the SSM agent keeps them on a hybrid host. Every wait is on a condition
with a deadline taken from the run's ``Deadline``; ``close`` stops every agent still running.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import boto3
from _agent_procs import AgentProc, Deadline
from _dev import BIN, Dev, login_body

APP, RSS_APP = "prod/bench", "prod/rss"
READ_SECRET, ROTATED = "s0", "rot"
HOST_USER = "bench-host"


def ms(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (milliseconds), rounded to 10 µs."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 2)


def value(n: int) -> dict[str, Any]:
    """A JSON secret of about 200 bytes; ``n`` tells versions apart."""
    return {"n": n, "password": f"{n:08d}" + "x" * 170}


class Stack:
    def __init__(self, dev: Dev, deadline: Deadline) -> None:
        self.dev = dev
        self.env = dev.env
        self.addr = dev.env["KMSD_ADDR"]
        self.deadline = deadline
        self.run_dir = Path(tempfile.mkdtemp(prefix="kmsagent-bench-", dir="/tmp"))
        self.http: aiohttp.ClientSession  # made in setup(), inside the event loop
        self.token = ""
        self.rotated = ""  # the current version id of ROTATED
        self.agents: list[AgentProc] = []

    async def until(self, check: Callable[[], Awaitable[bool]], what: str, every: float) -> None:
        end = time.monotonic() + self.deadline.left()
        while not await check():
            if time.monotonic() > end:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(every)

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.http.request(method, self.addr + path, json=body, headers=headers) as resp:
            doc = await resp.json()
            if resp.status not in (200, 201):
                raise RuntimeError(f"{method} {path}: {resp.status} {doc}")
            return doc

    async def put(self, path: str, name: str, value: dict[str, Any]) -> str:
        """``kmsctl secret put PATH NAME --json VALUE``: the new version id."""
        doc = await self.api("PUT", f"/v1/secrets/{path}/{name}", {"kind": "json", "value": value})
        if (path, name) == (APP, ROTATED):
            self.rotated = str(doc["version_id"])
        return str(doc["version_id"])

    async def kmsd_metric(self, name: str) -> float:
        async with self.http.get(self.addr + "/metrics") as resp:
            text = await resp.text()
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(match[1]) if match else 0.0

    async def held_polls(self, n: int) -> bool:
        return await self.kmsd_metric("kmsd_watch_held_polls") == n

    async def start_agent(
        self, name: str, path: str, *, compat_port: int = 0, token: str = "", bin_dir: Path = BIN
    ) -> AgentProc:
        """``kmsagent run`` (see ``AgentProc``), once its ``/healthz`` says it has synced."""
        agent = AgentProc(
            name,
            path,
            self.run_dir,
            self.env,
            compat_port=compat_port,
            token=token,
            bin_dir=bin_dir,
        )
        self.agents.append(agent)  # before any wait: a failed start is still stopped
        await self.until(agent.healthy, f"{name} to sync", 0.01)
        return agent

    async def stop_agent(self, agent: AgentProc) -> None:
        self.agents.remove(agent)
        await agent.close()

    async def setup(self) -> None:
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32))
        async with self.http.post(
            self.addr + "/v1/auth/aws/login", json=login_body(self.env)
        ) as resp:
            self.token = (await resp.json())["token"]
        for app in (APP, RSS_APP):
            await self.api("PUT", f"/v1/nodes/{app}?parents=true")
        for name in (READ_SECRET, "s1", ROTATED):
            version_id = await self.put(APP, name, value(0))
        self.rotated = version_id
        arn = await asyncio.to_thread(self._host_user)
        for app in (APP, RSS_APP):
            body = {"principal": arn, "path": app, "permission": "read", "cidrs": []}
            await self.api("POST", "/v1/bindings", body)

    def _host_user(self) -> str:
        """The hosts' IAM user in moto; its keys in a credentials file, as on a hybrid host."""
        iam = boto3.client(
            "iam",
            endpoint_url=self.env["AWS_ENDPOINT_URL"],
            region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )
        arn = str(iam.create_user(UserName=HOST_USER)["User"]["Arn"])
        key = iam.create_access_key(UserName=HOST_USER)["AccessKey"]
        path = self.run_dir / "host-credentials"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(
                f"[default]\naws_access_key_id={key['AccessKeyId']}\n"
                f"aws_secret_access_key={key['SecretAccessKey']}\n"
            )
        return arn

    async def close(self) -> None:
        for agent in self.agents:
            await agent.close()
        self.agents = []
        if hasattr(self, "http"):
            await self.http.close()
