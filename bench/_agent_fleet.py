"""Fleet worker for ``agent.py``: hundreds of real ``kmsagent.sync.Agent`` instances on one loop.

Each agent is what ``kmsagent run`` builds (``kmsagent/cli.py``), minus the local API: its own
:class:`~kmsagent.upstream.Kmsd` (its own sign-in and token), its own value cache and sync
loop. Per process they share what a process would share anyway: one aiohttp ``ClientSession``
(``TCPConnector(limit=0)``), one aiobotocore session reading the hosts' credentials file and
one :class:`~kmsagent.aws.Reader` (its SM client; each agent still reads every new version
itself, since the value cache is per agent).

Two subclasses only *observe* the real logic: ``_Kmsd.watch`` notes when a long poll came
back with a new effective set, ``_Agent.publish`` when the new view was swapped in (from that
instant the local API would serve it). Times are ``time.monotonic_ns()``, system-wide on
Linux, so the parent compares them with its own "PUT returned".

The parent talks to each worker over a ``multiprocessing`` pipe, one command at a time:
``(name, kwargs)`` in, one picklable reply out (``{"error": ...}`` on failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
from _dev import serve_commands

from kmsagent.aws import Reader
from kmsagent.creds import CredentialsConfig, credentials_session, frozen
from kmsagent.state import PathView
from kmsagent.sync import Agent, PathState, SyncConfig
from kmsagent.upstream import Kmsd
from kmsd.aws.login import sts_endpoint_from_env
from kmsd.logs import configure


class _Kmsd(Kmsd):
    """kmsagent's upstream client; notes when a long poll answered with a new set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answered: dict[int, int] = {}  # path_version -> monotonic_ns the answer was read

    async def watch(self, report: dict[str, Any], hold: float) -> dict[str, Any] | None:
        doc = await super().watch(report, hold)
        if doc is not None:
            self.answered.setdefault(int(doc.get("path_version", -1)), time.monotonic_ns())
        return doc


class _Agent(Agent):
    """kmsagent's sync logic, unchanged; tells the fleet when a view is published."""

    kmsd: _Kmsd

    def __init__(self, *args: Any, fleet: Fleet, index: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fleet = fleet
        self.index = index

    def publish(self, state: PathState, view: PathView) -> None:
        super().publish(state, view)
        self.fleet.published(self, view, time.monotonic_ns())


class Fleet:
    def __init__(self, conn: Connection, wid: int) -> None:
        self.conn = conn
        self.wid = wid
        self.agents: list[_Agent] = []
        self.tasks: list[asyncio.Task[None]] = []
        # secret version id -> {agent index: (monotonic_ns the poll answered, ns published)}
        self.served: dict[str, dict[int, tuple[int, int]]] = {}
        self.secret = ""
        self.changed = asyncio.Event()
        self.stack = contextlib.AsyncExitStack()

    # -- plumbing ----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await serve_commands(self.conn, self)
        finally:
            for task in self.tasks:
                task.cancel()
            for task in self.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.stack.aclose()

    def published(self, agent: _Agent, view: PathView, now: int) -> None:
        secret = view.secrets.get(self.secret)
        current = secret.current if secret is not None else None
        if current is not None:
            answered = agent.kmsd.answered.get(view.path_version, 0)  # 0: not from a poll
            self.served.setdefault(current.version_id, {}).setdefault(agent.index, (answered, now))
        self.changed.set()

    async def until(self, check: Callable[[], bool], deadline_s: float) -> bool:
        deadline = time.monotonic() + deadline_s
        while not check():
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return True

    def synced(self) -> int:
        return sum(1 for a in self.agents for s in a.paths.values() if s.view is not None)

    # -- commands ----------------------------------------------------------------------------

    async def cmd_start(
        self,
        *,
        count: int,
        path: str,
        secret: str,
        env: dict[str, str],
        creds_file: str,
        log_file: str,
        starting: int,
        deadline_s: float,
    ) -> dict[str, Any]:
        """Build ``count`` agents; start them ``starting`` at a time (each signs in and syncs).

        Returns once every agent serves the path (or at the deadline: ``synced`` says how many).
        """
        os.environ.update(env)
        # Agents log as ``kmsagent run`` does (JSON lines on stderr), here into a file.
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
        configure("json", logging.INFO)
        self.secret = secret
        region = env["AWS_DEFAULT_REGION"]
        session = credentials_session(CredentialsConfig(mode="file", file=creds_file))
        http = await self.stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        )
        reader = await self.stack.enter_async_context(Reader(session, region))
        sts = sts_endpoint_from_env(region, os.environ)
        for i in range(count):
            kmsd = _Kmsd(
                env["KMSD_ADDR"],
                env["KMSD_SERVER_ID"],
                credentials=lambda: frozen(session),
                region=region,
                sts_endpoint=sts,
                http=http,
            )
            config = SyncConfig(instance_id=f"fleet-{self.wid}-{i:04d}")
            self.agents.append(_Agent([path], config, kmsd, reader, fleet=self, index=i))
        started = time.monotonic()
        deadline = started + deadline_s

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        def room() -> bool:
            # At most ``starting`` agents signing in and syncing at once, like a fleet that
            # does not all boot in the same millisecond.
            return len(self.tasks) - self.synced() < starting

        for i, agent in enumerate(self.agents):
            if not await self.until(room, left()):
                break
            self.tasks.append(asyncio.create_task(agent.run(), name=f"agent {i}"))
        await self.until(lambda: self.synced() == count, left())
        return {"synced": self.synced(), "start_s": round(time.monotonic() - started, 2)}

    async def cmd_status(self) -> dict[str, Any]:
        states = [s for a in self.agents for s in a.paths.values()]
        stats = [a.stats for a in self.agents]
        return {
            "agents": len(self.agents),
            "synced": sum(1 for s in states if s.view is not None),
            "polling": sum(1 for s in states if s.polling),
            "upstream_ok": sum(1 for s in states if s.upstream == "ok"),
            "errors": sum(s["errors"] for s in stats),
            "polls": sum(s["polls"] for s in stats),
            "swaps": sum(s["swaps"] for s in stats),
            "logins": sum(a.kmsd.logins for a in self.agents),
            "aws_reads": self.agents[0].reader.calls if self.agents else 0,
            "first_error": next((s.error for s in states if s.error), None),
        }

    async def cmd_wait(self, version_id: str, deadline_s: float) -> dict[str, Any]:
        """Wait until every agent serves ``version_id``; (poll answered, published) of each."""
        count = len(self.agents)
        complete = await self.until(
            lambda: len(self.served.get(version_id, ())) >= count, deadline_s
        )
        return {"complete": complete, "times": list(self.served.get(version_id, {}).values())}


def main(conn: Connection, wid: int) -> None:
    """Process entry point (spawned by ``agent.py``)."""
    asyncio.run(Fleet(conn, wid).run())
