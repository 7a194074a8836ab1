"""Class 11, the agent: a real ``kmsagent run`` against a hostile kmsd, and its own inputs.

The hostile kmsd is a small aiohttp server in this test (an attacker, not kmsd's component):
it signs the agent in, then answers reads and polls as each case says. The agent is the real
program, a subprocess logging JSON to a file; what it does is observed from outside: what
reached the hostile server and when, what the agent logged, its peak memory (VmHWM), how it
exited.

| kind     | the case                                   | the agent must                        |
|----------|--------------------------------------------|---------------------------------------|
| local    | a hostile ``X-Kmsagent-Token`` on 127.0.0.1 | answer 401 (403 when forwarded)       |
| retry    | 503 with a hostile ``Retry-After``          | wait at most 60 s (logged retry_in)   |
| flood    | a 200 MB answer                             | drop it unread; peak RSS stays small  |
| spin     | every poll answered at once                 | start requests >= 0.5 s apart         |
| tokenfile| a token file it must not trust              | refuse to start (exit 2, one line)    |
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import SERVER_ID, free_port
from tests.e2e.harness import BIN
from tests.security.wire import Result, Tally, until

pytestmark = pytest.mark.slow

KLASS = "11 agent"
PATH = "sec/shop"
EMPTY_SET = {"path": PATH, "path_version": 1, "hash": "h1", "secrets": []}
MIN_GAP_S = 0.5 * 0.95  # kmsagent's minimum interval between requests for a path, timer slack
MAX_RETRY_S = 60.0
RSS_BOUND_KB = (
    160 * 1024
)  # an idle agent peaks near 70 MiB here; a 200 MB answer read whole, far above
Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- the hostile kmsd --------------------------------------------------------------------------


class HostileKmsd:
    """A stand-in for kmsd on its own event loop thread: signs anyone in, then misbehaves."""

    def __init__(self, effective: Answer, watch: Answer | None = None) -> None:
        """``watch`` None: polls are held until the server closes, as a quiet kmsd holds them."""
        self.effective, self.watch = effective, watch or self._hold
        self.hits: list[tuple[str, float]] = []
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.closing = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/auth/aws/login", self._login)
        app.router.add_get("/v1/effective/{path:.+}", self._hit("effective", self.effective))
        app.router.add_post("/v1/watch", self._hit("watch", self.watch))
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        self.loop.run_until_complete(site.start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _login(self, request: web.Request) -> web.Response:
        expires = datetime.now(UTC) + timedelta(hours=1)
        doc = {
            "token": "t",
            "expires_at": expires.isoformat(),
            "principal": "arn:aws:iam::1:role/h",
        }
        return web.json_response(doc)

    async def _hold(self, request: web.Request) -> web.Response:
        await self.closing.wait()
        return web.Response(status=304)

    def _hit(self, route: str, answer: Answer) -> Answer:
        async def handler(request: web.Request) -> web.StreamResponse:
            self.hits.append((route, time.monotonic()))
            return await answer(request)

        return handler

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.closing.set)
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def the_empty_set(request: web.Request) -> web.Response:
    return web.json_response(EMPTY_SET)


async def not_modified_at_once(request: web.Request) -> web.Response:
    return web.Response(status=304)


def unavailable(retry_after: str) -> Answer:
    async def answer(request: web.Request) -> web.Response:
        doc = {"title": "Busy", "status": 503}
        return web.json_response(doc, status=503, headers={"Retry-After": retry_after})

    return answer


def flood(total: int, *, declared: bool) -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if declared:
            resp.content_length = total
        await resp.prepare(request)
        chunk, sent = b" " * (1024 * 1024), 0
        with contextlib.suppress(ConnectionError):
            while sent < total:
                await resp.write(chunk)
                sent += len(chunk)
            await resp.write_eof()
        return resp

    return answer


# -- the real agent ----------------------------------------------------------------------------


class Agent:
    """``kmsagent run`` as a subprocess; stdout and stderr in one log file."""

    def __init__(self, kmsd_addr: str, workdir: Path, *extra: str) -> None:
        self.log = workdir / "kmsagent.log"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("KMSD_", "KMSAGENT_"))},
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        argv = [str(BIN / "kmsagent"), "run", "--path", PATH, "--kmsd-addr", kmsd_addr]
        argv += ["--server-id", SERVER_ID, "--instance-id", "i-hostile", "--socket", ""]
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [*argv, *extra], env=env, cwd=workdir, stdout=sink, stderr=sink
            )

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict) and doc.get("event") == name:
                    out.append(doc)
        return out

    def peak_rss_kb(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        assert match, status
        return int(match[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextlib.contextmanager
def running(kmsd: HostileKmsd, workdir: Path, *extra: str) -> Iterator[Agent]:
    agent = Agent(kmsd.addr, workdir, *extra)
    try:
        yield agent
    finally:
        agent.stop()
        kmsd.close()


def local_get(port: int, headers: list[tuple[bytes, bytes]]) -> int:
    """A GET of /v1/version on the agent's 127.0.0.1 listener with these exact header lines."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", "/v1/version")
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


# -- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentCase:
    id: str
    kind: str  # local | retry | flood | spin | tokenfile
    hostile: Any  # the header lines, the Retry-After, the answer, the watch, the file to plant
    expected: Any  # the status, or a description of the outcome


def symlink(tmp: Path) -> Path:
    (tmp / "chosen").write_text("attacker-chosen-token\n")
    (tmp / "chosen").chmod(0o600)
    (tmp / "token").symlink_to(tmp / "chosen")
    return tmp / "token"


def mode(bits: int) -> Callable[[Path], Path]:
    def plant(tmp: Path) -> Path:
        (tmp / "token").write_text("readable-token\n")
        (tmp / "token").chmod(bits)
        return tmp / "token"

    return plant


def other_owner(tmp: Path) -> Path:
    (tmp / "token").write_text("someone-elses-token\n")
    (tmp / "token").chmod(0o600)
    os.chown(tmp / "token", 65534, 65534)  # nobody
    return tmp / "token"


TOKEN = b"{token}"  # the agent's own token, read from the file it made
CASES = [
    AgentCase("token-non-utf8", "local", [(b"X-Kmsagent-Token", b"\xff\xfe\xfd")], 401),
    AgentCase("token-latin1-of-the-token", "local", [(b"X-Kmsagent-Token", TOKEN + b"\xe9")], 401),
    AgentCase("token-empty", "local", [(b"X-Kmsagent-Token", b"")], 401),
    AgentCase("token-missing", "local", [], 401),
    AgentCase("token-wrong", "local", [(b"X-Kmsagent-Token", b"guess")], 401),
    AgentCase(
        "token-twice-right-then-wrong",
        "local",
        [(b"X-Kmsagent-Token", TOKEN), (b"X-Kmsagent-Token", b"guess")],
        401,
    ),
    AgentCase(
        "token-right-but-forwarded",
        "local",
        [(b"X-Kmsagent-Token", TOKEN), (b"X-Forwarded-For", b"203.0.113.9")],
        403,
    ),
    AgentCase("retry-after-1e9", "retry", "1e9", "retry_in <= 60 s"),
    AgentCase("retry-after-nine-digits", "retry", "999999999", "retry_in <= 60 s"),
    AgentCase("retry-after-inf", "retry", "inf", "retry_in <= 60 s"),
    AgentCase("retry-after-nan", "retry", "nan", "retry_in <= 60 s"),
    AgentCase("retry-after-negative", "retry", "-5", "0 <= retry_in <= 60 s"),
    AgentCase("retry-after-far-date", "retry", "Fri, 31 Dec 9999 23:59:59 GMT", "retry_in <= 60 s"),
    AgentCase(
        "answer-200mb-declared", "flood", flood(200 << 20, declared=True), "dropped; RSS bounded"
    ),
    AgentCase(
        "answer-200mb-chunked", "flood", flood(200 << 20, declared=False), "dropped; RSS bounded"
    ),
    AgentCase("polls-answered-200-at-once", "spin", the_empty_set, ">= 0.5 s between requests"),
    AgentCase(
        "polls-answered-304-at-once", "spin", not_modified_at_once, ">= 0.5 s between requests"
    ),
    AgentCase("token-file-symlink", "tokenfile", symlink, "exit 2: is a symbolic link"),
    AgentCase("token-file-0644", "tokenfile", mode(0o644), "exit 2: has mode 0644"),
    AgentCase("token-file-0620", "tokenfile", mode(0o620), "exit 2: has mode 0620"),
    AgentCase("token-file-other-owner", "tokenfile", other_owner, "exit 2: another user's"),
]


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, bytes]]:
    """One synced agent with its 127.0.0.1 listener, for the token header cases."""
    workdir = tmp_path_factory.mktemp("agent-local")
    port = free_port()
    token_file = workdir / "token"  # absent: the agent makes it (0600)
    kmsd = HostileKmsd(the_empty_set)
    with running(kmsd, workdir, "--listen-port", str(port), "--token-file", str(token_file)) as a:
        assert until(lambda: token_file.exists() and _listening(port)), a.log.read_text()
        yield port, token_file.read_bytes().strip()


@dataclass(frozen=True)
class Outcome:
    held: bool  # the agent did what the table says
    detail: str
    server_error: bool = False


def _listening(port: int) -> bool:
    try:
        local_get(port, [])
    except OSError:
        return False
    return True


def _local(case: AgentCase, listener: tuple[int, bytes]) -> Outcome:
    port, token = listener
    lines = [(name, value.replace(TOKEN, token)) for name, value in case.hostile]
    status = local_get(port, lines)
    return Outcome(status == case.expected, f"status {status}", server_error=status >= 500)


def _retry(case: AgentCase, workdir: Path) -> Outcome:
    with running(HostileKmsd(unavailable(case.hostile)), workdir) as agent:
        until(lambda: agent.events("sync_failed"))
        failed = agent.events("sync_failed")
    delays = [e.get("retry_in") for e in failed]
    ok = bool(delays) and all(isinstance(d, int | float) and 0 <= d <= MAX_RETRY_S for d in delays)
    return Outcome(ok, f"retry_in {delays[:3]}")


def _flood(case: AgentCase, workdir: Path) -> Outcome:
    kmsd = HostileKmsd(case.hostile)
    with running(kmsd, workdir) as agent:
        until(lambda: agent.events("sync_failed") or agent.proc.poll() is not None, within=60)
        peak = agent.peak_rss_kb() if agent.proc.poll() is None else -1
        errors = [e.get("error", "") for e in agent.events("sync_failed")]
    ok = bool(errors) and 0 < peak < RSS_BOUND_KB
    return Outcome(ok, f"peak RSS {peak} kB, errors {errors[:1]}")


def _spin(case: AgentCase, workdir: Path) -> Outcome:
    kmsd = HostileKmsd(the_empty_set, case.hostile)
    with running(kmsd, workdir):
        until(lambda: len(kmsd.hits) >= 6, within=15)
        starts = [t for _, t in kmsd.hits]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    ok = len(starts) >= 6 and min(gaps) >= MIN_GAP_S
    return Outcome(ok, f"{len(starts)} requests, smallest gap {min(gaps, default=0):.3f} s")


def _token_file(case: AgentCase, workdir: Path) -> Outcome:
    path = case.hostile(workdir)
    port = free_port()
    kmsd = HostileKmsd(the_empty_set)
    with running(kmsd, workdir, "--listen-port", str(port), "--token-file", str(path)) as agent:
        until(lambda: agent.proc.poll() is not None or _listening(port))
        code = agent.proc.poll()
        log = agent.log.read_text().strip().splitlines()
    ok = code == 2 and len(log) == 1 and "refusing it" in log[0]
    return Outcome(ok, f"exit {code}, log {log[:2]}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused(
    case: AgentCase, listener: tuple[int, bytes], tally: Tally, tmp_path: Path
) -> None:
    if case.kind == "local":
        got = _local(case, listener)
    else:
        run = {"retry": _retry, "flood": _flood, "spin": _spin, "tokenfile": _token_file}
        got = run[case.kind](case, tmp_path)
    result = Result(case.id, got.held, not got.held, got.server_error, got.detail)
    tally.record(KLASS, result)
    assert got.held, f"expected {case.expected}: {got.detail}"
