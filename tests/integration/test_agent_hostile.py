"""kmsagent against hostile input: a token file it must not trust, and a kmsd that misbehaves.

The stand-in "kmsd" here is a tiny aiohttp app in the test: it plays an attacker (or a broken
kmsd), answering sign-in and then whatever the test wants, so the agent's handling of those
answers is what is exercised, over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiobotocore.session import AioSession
from aiohttp import web
from aiohttp.test_utils import TestServer
from botocore.credentials import ReadOnlyCredentials
from structlog.testing import capture_logs

from kmsagent.aws import Reader
from kmsagent.pacing import MAX_SERVER_DELAY_S, MIN_POLL_INTERVAL_S
from kmsagent.sync import Agent, SyncConfig
from kmsagent.upstream import MAX_ANSWER_BYTES, Kmsd
from tests.conftest import free_port
from tests.integration.conftest import eventually

BIN = Path(sys.executable).parent

# -- the token file, at start-up -------------------------------------------------------------


def start_agent(token_file: Path) -> subprocess.CompletedProcess[str]:
    """``kmsagent run`` with the localhost listener; it must stop at the token file."""
    return subprocess.run(
        [
            str(BIN / "kmsagent"),
            "run",
            *("--path", "prod/shop", "--kmsd-addr", "http://127.0.0.1:9"),
            *("--server-id", "kmsd-test", "--instance-id", "i-hostile", "--socket", ""),
            *("--listen-port", str(free_port()), "--token-file", str(token_file)),
        ],
        capture_output=True,
        text=True,
        timeout=20,  # an agent that accepted the file would run on: the test fails here
        env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true"},
        check=False,
    )


def planted_symlink(tmp_path: Path) -> Path:
    target = tmp_path / "attacker-chosen"
    target.write_text("attacker-chosen-token\n")
    os.chmod(target, 0o600)
    (tmp_path / "token").symlink_to(target)
    return tmp_path / "token"


def readable_by_others(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text("everyone-can-read-this\n")
    os.chmod(tmp_path / "token", 0o644)
    return tmp_path / "token"


def writable_by_group(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text("the-group-can-change-this\n")
    os.chmod(tmp_path / "token", 0o620)
    return tmp_path / "token"


def a_fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "token", 0o600)
    return tmp_path / "token"


def a_directory(tmp_path: Path) -> Path:
    (tmp_path / "token").mkdir(mode=0o700)
    return tmp_path / "token"


@pytest.mark.parametrize(
    ("plant", "reason"),
    [
        (planted_symlink, "is a symbolic link"),
        (readable_by_others, "has mode 0644"),
        (writable_by_group, "has mode 0620"),
        (a_fifo, "is not a regular file"),
        (a_directory, "is not a regular file"),
    ],
)
def test_an_untrustworthy_token_file_stops_the_start_up(
    tmp_path: Path, plant: object, reason: str
) -> None:
    path = plant(tmp_path)  # type: ignore[operator]
    done = start_agent(path)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()  # one clear line
    assert line.startswith(f"kmsagent: token file {path} {reason}")
    assert line.endswith("; refusing it")


# -- a hostile kmsd --------------------------------------------------------------------------

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]
PATH = "prod/shop"
EMPTY_SET = {"path": PATH, "path_version": 1, "hash": "h1", "secrets": []}


class Hostile:
    """A stand-in for kmsd: signs anyone in, then answers reads and polls as the test says."""

    def __init__(self, effective: Answer, watch: Answer | None = None) -> None:
        self.effective = effective
        self.watch = watch or effective
        self.hits: list[tuple[str, float]] = []  # (route, monotonic time it arrived)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/auth/aws/login", self._login)
        app.router.add_get("/v1/effective/{path:.+}", self._hit("effective", self.effective))
        app.router.add_post("/v1/watch", self._hit("watch", self.watch))
        return app

    async def _login(self, request: web.Request) -> web.Response:
        expires = datetime.now(UTC) + timedelta(hours=1)
        return web.json_response(
            {"token": "t", "expires_at": expires.isoformat(), "principal": "arn:aws:iam::1:role/h"}
        )

    def _hit(self, route: str, answer: Answer) -> Answer:
        async def handler(request: web.Request) -> web.StreamResponse:
            self.hits.append((route, time.monotonic()))
            return await answer(request)

        return handler

    def count(self, route: str) -> int:
        return sum(1 for r, _ in self.hits if r == route)


async def no_aws_credentials() -> ReadOnlyCredentials:
    return ReadOnlyCredentials("AKIDEXAMPLE", "not-a-real-secret", None)


@asynccontextmanager
async def agent_against(kmsd: Hostile) -> AsyncIterator[Agent]:
    """A real agent syncing ``PATH`` from the stand-in; no value is ever read from AWS."""
    server = TestServer(kmsd.app())
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            upstream = Kmsd(
                str(server.make_url("")),
                "kmsd-test",
                credentials=no_aws_credentials,
                region="us-east-1",
                sts_endpoint="https://sts.us-east-1.amazonaws.com",
                http=http,
            )
            reader = Reader(AioSession(), "us-east-1")  # never opened: the sets hold no secret
            agent = Agent([PATH], SyncConfig(instance_id="i-hostile"), upstream, reader)
            task = asyncio.create_task(agent.run())
            try:
                yield agent
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await server.close()


def unavailable(retry_after: str) -> Answer:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response(
            {"title": "Busy"}, status=503, headers={"Retry-After": retry_after}
        )

    return answer


async def test_a_retry_after_that_is_not_delay_seconds_is_ignored() -> None:
    kmsd = Hostile(unavailable("1e9"))  # float() took it for 31 years: the path froze
    async with agent_against(kmsd) as agent:
        await eventually(lambda: kmsd.count("effective") >= 3)  # the agent's own backoff
        assert agent.paths[PATH].upstream == "unreachable"


async def test_a_huge_retry_after_is_bounded() -> None:
    kmsd = Hostile(unavailable("999999999"))
    with capture_logs() as logs:
        async with agent_against(kmsd) as agent:
            await eventually(lambda: agent.stats["errors"] >= 1)
    [failed, *_] = [e for e in logs if e["event"] == "sync_failed"]
    assert failed["retry_in"] == MAX_SERVER_DELAY_S


class Flood:
    """An answer of ``total`` bytes streamed in 1 MiB chunks, declared up front or not."""

    def __init__(self, total: int, *, declared: bool) -> None:
        self.total, self.declared = total, declared
        self.sent = 0
        self.finished = False

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if self.declared:
            resp.content_length = self.total
        await resp.prepare(request)
        chunk = b" " * (1024 * 1024)
        with contextlib.suppress(ConnectionError):
            while self.sent < self.total:
                await resp.write(chunk)
                self.sent += len(chunk)
            await resp.write_eof()
            self.finished = True
        return resp


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_an_answer_past_the_cap_is_an_error_and_is_not_read_whole(declared: bool) -> None:
    flood = Flood(200 * 1024 * 1024, declared=declared)
    async with agent_against(Hostile(flood)) as agent:
        state = agent.paths[PATH]
        await eventually(lambda: "larger than" in (state.error or ""), within=20)
        assert state.upstream == "unreachable"  # so retried with backoff
        assert state.view is None
    assert not flood.finished
    assert flood.sent < 4 * MAX_ANSWER_BYTES  # the agent hung up (socket buffers aside)


async def at_once_not_modified(request: web.Request) -> web.Response:
    return web.Response(status=304)


async def at_once_the_same_set(request: web.Request) -> web.Response:
    return web.json_response(EMPTY_SET)


@pytest.mark.parametrize("watch", [at_once_not_modified, at_once_the_same_set])
async def test_a_kmsd_answering_every_poll_at_once_cannot_make_the_agent_spin(
    watch: Answer,
) -> None:
    kmsd = Hostile(at_once_the_same_set, watch)
    async with agent_against(kmsd) as agent:
        await eventually(lambda: len(kmsd.hits) >= 5)
        assert agent.paths[PATH].view is not None
    starts = [t for _, t in kmsd.hits]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= MIN_POLL_INTERVAL_S * 0.95, gaps  # a little timer slack
