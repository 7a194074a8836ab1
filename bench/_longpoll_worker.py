"""Load-generator process for ``longpoll.py``: thousands of long polls on one asyncio loop.

The parent talks to each worker over a ``multiprocessing`` pipe, one command at a time:
``(name, kwargs)`` in, one picklable reply out. A watcher records ``time.monotonic_ns()`` as
soon as its answer (kmsd or bare: the whole body; etcd: the first event line) is read, so the
parent can compare it with its own commit timestamps (CLOCK_MONOTONIC is system-wide).

Kinds of target (one ``ClientSession`` with ``TCPConnector(limit=0)`` each):

* ``kmsd`` - ``POST {base}/v1/watch?timeout=T`` with a bearer token;
* ``bare`` - ``POST {base}/watch`` on ``_longpoll_bare.py``;
* ``etcd`` - ``POST {base}/v3/watch`` on etcd's HTTP/JSON gateway, a stream of JSON lines.

Connection set-up is limited to CONNECTING at a time per worker so that thousands of connects
do not overflow the server's accept backlog (SYN retries would add whole seconds of set-up).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections import defaultdict
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import orjson
from _dev import serve_commands

CONNECTING = 32
# An answer: (monotonic_ns when read, HTTP status or 0 for an etcd event, path_version or -1).
Answer = tuple[int, int, int]


class _Gate:
    """Holds one connect slot until the request's connection exists (or the request ends)."""

    def __init__(self, sem: asyncio.Semaphore) -> None:
        self._sem = sem
        self._held = False

    async def acquire(self) -> None:
        await self._sem.acquire()
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._sem.release()


async def _on_connected(_session: Any, ctx: Any, _params: Any) -> None:
    gate = ctx.trace_request_ctx
    if isinstance(gate, _Gate):
        gate.release()


class Worker:
    def __init__(self, conn: Connection, wid: int) -> None:
        self.conn = conn
        self.wid = wid
        self.sessions: dict[str, aiohttp.ClientSession] = {}
        self.bases: dict[str, str] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.tasks: dict[str, set[asyncio.Task[None]]] = defaultdict(set)
        self.answers: dict[str, list[Answer]] = defaultdict(list)
        self.total = 0
        self.created = 0
        self.errors: list[str] = []
        self.changed = asyncio.Event()
        self.sem = asyncio.Semaphore(CONNECTING)

    # -- plumbing ----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await serve_commands(self.conn, self)
        finally:
            for kind in list(self.sessions):
                await self.cmd_close(kind)

    def _record(self, path: str, answer: Answer) -> None:
        self.answers[path].append(answer)
        self.total += 1
        self.changed.set()

    # -- commands ----------------------------------------------------------------------------

    async def cmd_open(self, kind: str, base: str, token: str | None = None) -> int:
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(_on_connected)
        trace.on_connection_reuseconn.append(_on_connected)
        self.sessions[kind] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=300),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            trace_configs=[trace],
        )
        self.bases[kind] = base
        self.headers[kind] = {"Content-Type": "application/json"}
        if token:
            self.headers[kind]["Authorization"] = f"Bearer {token}"
        return self.wid

    async def cmd_start(self, kind: str, items: list[tuple[str, int]], hold_s: int = 180) -> int:
        """Start one watcher per (path, version) item; return how many were started."""
        poll = self._etcd_watch if kind == "etcd" else self._poll
        for i, (path, version) in enumerate(items):
            task = asyncio.create_task(poll(kind, path, version, hold_s, i))
            self.tasks[kind].add(task)
            task.add_done_callback(self.tasks[kind].discard)
        return len(items)

    async def cmd_counts(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "created": self.created,
            "errors": len(self.errors),
            "first_errors": self.errors[:3],
            "inflight": sum(len(t) for t in self.tasks.values()),
        }

    async def cmd_wait(self, expect: dict[str, int], deadline_s: float) -> dict[str, Any]:
        """Wait until each path has its expected number of answers; return them."""
        deadline = time.monotonic() + deadline_s

        def done() -> bool:
            return all(len(self.answers.get(p, ())) >= n for p, n in expect.items())

        while not done() and not self.errors:
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return {
            "answers": {p: list(self.answers.get(p, ())) for p in expect},
            "complete": done(),
            **(await self.cmd_counts()),
        }

    async def cmd_reset(self) -> int:
        dropped = self.total
        self.answers.clear()
        self.total = 0
        self.created = 0
        self.errors.clear()
        return dropped

    async def cmd_close(self, kind: str) -> int:
        tasks = list(self.tasks.pop(kind, ()))
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session = self.sessions.pop(kind, None)
        if session is not None:
            await session.close()
        return len(tasks)

    # -- watchers ----------------------------------------------------------------------------

    async def _poll(self, kind: str, path: str, version: int, hold_s: int, i: int) -> None:
        session = self.sessions[kind]
        if kind.startswith("kmsd"):
            url = f"{self.bases[kind]}/v1/watch?timeout={hold_s}"
        else:
            url = f"{self.bases[kind]}/watch"
        body = orjson.dumps(
            {
                "path": path,
                "path_version": version,
                "instance_id": f"bench-{self.wid}-{i}",
                "app_process_ids": [],
                "held": {},
            }
        )
        gate = _Gate(self.sem)
        await gate.acquire()
        try:
            async with session.post(
                url, data=body, headers=self.headers[kind], trace_request_ctx=gate
            ) as resp:
                gate.release()
                raw = await resp.read()
                now = time.monotonic_ns()
                status = resp.status
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.errors.append(f"{kind} {path}: {exc!r}")
            self.changed.set()
            return
        finally:
            gate.release()
        got = orjson.loads(raw).get("path_version", -1) if status == 200 and raw else -1
        self._record(path, (now, status, got))

    async def _etcd_watch(self, kind: str, path: str, _version: int, _t: int, _i: int) -> None:
        session = self.sessions[kind]
        key = base64.b64encode(path.encode()).decode()
        body = orjson.dumps({"create_request": {"key": key}})
        gate = _Gate(self.sem)
        await gate.acquire()
        try:
            async with session.post(
                f"{self.bases[kind]}/v3/watch", data=body, trace_request_ctx=gate
            ) as resp:
                gate.release()
                async for line in resp.content:
                    result = orjson.loads(line).get("result", {})
                    if result.get("events"):
                        now = time.monotonic_ns()
                        rev = int(result["events"][0]["kv"].get("mod_revision", -1))
                        self._record(path, (now, 0, rev))
                        return
                    if result.get("created"):
                        self.created += 1
                        self.changed.set()
                raise RuntimeError("watch stream ended without an event")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.errors.append(f"{kind} {path}: {exc!r}")
            self.changed.set()
        finally:
            gate.release()


def main(conn: Connection, wid: int) -> None:
    """Process entry point (spawned by ``longpoll.py``)."""
    asyncio.run(Worker(conn, wid).run())
