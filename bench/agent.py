"""kmsagent: local reads, from a put to the value served, a 1,000-agent fleet, memory.

Starts everything itself: ``kmsd dev`` in a fresh folder under /tmp (``_dev.py``: embedded
PostgreSQL, moto's AWS server and kmsd in one process), two applications (``prod/bench``, 3
secrets; ``prod/rss``, 100 secrets of about 200 bytes), an IAM user in moto for the
hosts with a read binding on both, and its keys in a credentials file (mode 0600), as the SSM
agent keeps them on a hybrid host. Agents run as ``kmsagent run --credentials file``.

Scenarios:

1. reads - ``kmsagent run`` pinned to CPU 0; the load generator (``_agent_load.py``, aiohttp
   over the Unix socket), kmsd dev and its PostgreSQL pinned to CPU 1 for the scenario:
   ``GET /v1/secrets/NAME`` of one cached secret, closed loop at a few concurrencies, then
   paced at PACED_RATE requests/s (latency from each request's scheduled start), then paced
   again with the agent real-time (SCHED_FIFO: other work on this shared machine cannot
   preempt it, as if CPU 0 were its own).
   The agent's CPU per request, run-queue wait and preemptions are read from /proc; a shape
   is run again (up to READ_ATTEMPTS) while the agent waited for CPU 0 more than
   QUIET_WAIT_SHARE of the time, and the least disturbed attempt is kept.
2. propagation - an application waits on the agent (``GET /v1/watch?since=V``), a secret is
   put (``PUT /v1/secrets/prod/bench/rot``, what ``kmsctl secret put`` sends), the application
   then reads ``GET /v1/secrets/rot`` until it has the new version id: PUT returned -> new
   value read by the application. Before each change the agent's poll is held by kmsd
   (``kmsd_watch_held_polls``) and the application's by the agent (``kmsagent_local_watchers``).
3. rss - a fresh ``kmsagent run`` on ``prod/rss``: VmRSS once it is healthy and after a few
   hundred reads (every fifth one all 100 secrets); the agent of scenarios 1-2 (3 secrets)
   for comparison; and ``_agent_rss.py``'s breakdown of a process that only imports what
   ``kmsagent run`` imports and opens its AWS reader (and a KMS client, and malloc_trim).
4. fleet - 4 processes (``_agent_fleet.py``) of 250 real ``kmsagent.sync.Agent``s each (own
   sign-in, cache and sync loop; no local API) against the same kmsd and moto. Per round,
   once kmsd holds every agent's poll and the adoption reports are flushed, one PUT; each
   agent's time of publishing the view with the new version (from then its local API would
   serve it) minus the PUT's return. The agents read the new value from moto, which runs in
   the ``kmsd dev`` process: CPU per round is split by thread (kmsd's event loop is the main
   thread, moto's server the others) and given for the fleet processes.

Every timestamp is ``time.monotonic_ns()`` (system-wide on Linux). Every wait is on a
condition with a deadline; the run is bounded by TOTAL_S and stops every child in ``finally``.

Usage: python bench/agent.py [--quick]   (full: about 2 minutes; --quick: about 20 s, 100
agents, shorter reads, 10 changes)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _agent_fleet
import _agent_load
from _dev import BIN, Dev, login_body
from _longpoll_stack import cpu_s

TOTAL_S = 300.0
WAIT_S = 60.0  # any single condition
PACED_RATE = 3000.0
FLEET_DEADLINE_S = 5.0  # the target: every agent serves a change within this
AGENT_CPU, LOAD_CPU = 0, 1
APP, RSS_APP = "prod/bench", "prod/rss"
READ_SECRET, ROTATED = "s0", "rot"
READ_URL = f"http://agent/v1/secrets/{READ_SECRET}"
READ_ATTEMPTS = 3
QUIET_WAIT_SHARE = 0.02  # of the run: the agent waited for CPU 0 this little
RESERVE_S = 150.0  # no read retried once less than this is left of TOTAL_S (for the fleet)
HOST_USER = "bench-host"


@dataclass(frozen=True)
class Cfg:
    read_s: float  # per load shape
    concurrencies: tuple[int, ...]
    changes: int
    rss_secrets: int
    rss_reads: int
    fleet_workers: int
    fleet_per_worker: int
    fleet_rounds: int
    fleet_starting: int  # per worker: agents signing in and syncing at once while starting


FULL = Cfg(10.0, (4, 8, 16), 50, 100, 500, 4, 250, 5, 16)
QUICK = Cfg(2.0, (8,), 10, 100, 200, 2, 50, 1, 16)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def ms(values: list[float], q: float) -> float:
    return round(pct(values, q), 2)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon and RssFile of ``pid``, KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    found = dict(re.findall(r"^(\w+):\s+(\d+) kB", text, re.M))
    names = {"rss_kib": "VmRSS", "hwm_kib": "VmHWM", "anon_kib": "RssAnon", "file_kib": "RssFile"}
    return {k: int(found[v]) for k, v in names.items()}


def main_thread_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid``'s main thread (kmsd dev: kmsd's event loop; moto has threads)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def waited(pid: int) -> tuple[float, int]:
    """Seconds ``pid``'s main thread was runnable but not running; times it was preempted."""
    wait_ns = int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M)
    return wait_ns / 1e9, int(match[1]) if match else -1


def threads_of(pids: list[int]) -> list[int]:
    """Every thread of ``pids`` (affinity is per thread on Linux)."""
    out: list[int] = []
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            out.extend(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    return out


def children_of(ppid: int) -> list[int]:
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(entry.name))
    return out


@contextlib.contextmanager
def pinned(placement: dict[int, set[int]]) -> Iterator[None]:
    """Pin each thread to its CPUs for the block, then give each back its own affinity."""
    before: dict[int, set[int]] = {}
    try:
        for tid, cpus in placement.items():
            with contextlib.suppress(ProcessLookupError):
                before[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, cpus)
        yield
    finally:
        for tid, cpus in before.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, cpus)


@contextlib.contextmanager
def realtime(tids: list[int], priority: int) -> Iterator[None]:
    """SCHED_FIFO for the block (no other process preempts them), then their own policy back.

    The kernel's real-time throttling (sched_rt_runtime_us) still leaves others 5 % of the CPU.
    """
    before: dict[int, tuple[int, int]] = {}
    try:
        for tid in tids:
            with contextlib.suppress(ProcessLookupError):
                before[tid] = (os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority)
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
        yield
    finally:
        for tid, (policy, prio) in before.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setscheduler(tid, policy, os.sched_param(prio))


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


class Deadline:
    def __init__(self, total_s: float) -> None:
        self.end = time.monotonic() + total_s

    def left(self, cap: float = WAIT_S) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the run exceeded its total time budget")
        return min(cap, left)


class AgentProc:
    """``kmsagent run`` on one path, logging to a file, serving on a Unix socket."""

    def __init__(self, name: str, path: str, run_dir: Path, dev_env: dict[str, str]) -> None:
        self.name = name
        self.socket = str(run_dir / f"{name}.sock")
        self.log = run_dir / f"{name}.log"
        base = {
            k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KMSD_", "KMSAGENT_"))
        }
        env = {
            **base,
            "AWS_ENDPOINT_URL": dev_env["AWS_ENDPOINT_URL"],
            "AWS_DEFAULT_REGION": dev_env["AWS_DEFAULT_REGION"],
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        argv = [
            str(BIN / "kmsagent"),
            "run",
            "--path",
            path,
            "--kmsd-addr",
            dev_env["KMSD_ADDR"],
            "--server-id",
            dev_env["KMSD_SERVER_ID"],
            "--socket",
            self.socket,
            "--credentials",
            "file",
            "--credentials-file",
            str(run_dir / "host-credentials"),
            "--instance-id",
            name,
        ]
        with self.log.open("w") as sink:
            self.proc = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT)
        self.http = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.socket))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text()[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {tail}")

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get("http://agent" + path) as resp:
            raw = await resp.read()
            is_json = resp.content_type == "application/json"
            return resp.status, json.loads(raw) if is_json else raw.decode()

    async def healthy(self) -> bool:
        self.alive()
        try:
            status, _ = await self.get("/healthz")
        except aiohttp.ClientError:
            return False
        return status == 200

    async def metric(self, name: str) -> float:
        _, text = await self.get("/metrics")
        match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        return float(match[1]) if match else -1.0

    async def close(self) -> None:
        await self.http.close()
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class Fleet:
    """Fleet worker processes (spawned: this process has threads) and their pipes."""

    def __init__(self, count: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes = []
        self.procs = []
        for wid in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_agent_fleet.main, args=(child, wid), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    async def call(self, wid: int, name: str, **kwargs: Any) -> Any:
        pipe = self.pipes[wid]
        await asyncio.to_thread(pipe.send, (name, kwargs))
        reply = await asyncio.to_thread(pipe.recv)
        if isinstance(reply, dict) and "error" in reply:
            raise RuntimeError(f"fleet worker {wid}: {reply['error']}")
        return reply

    async def each(self, name: str, kwargs: list[dict[str, Any]]) -> list[Any]:
        return list(
            await asyncio.gather(*(self.call(w, name, **kw) for w, kw in enumerate(kwargs)))
        )

    async def all(self, name: str, **kwargs: Any) -> list[Any]:
        return await self.each(name, [kwargs] * len(self.procs))

    def cpu_s(self) -> float:
        return sum(cpu_s(p.pid) for p in self.procs if p.pid is not None)

    def close(self) -> None:
        """Ask each worker to exit, then terminate stragglers (idempotent)."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("exit", {}))
        for proc in self.procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for pipe in self.pipes:
            pipe.close()
        self.procs, self.pipes = [], []


class Bench:
    def __init__(self, dev: Dev, cfg: Cfg, deadline: Deadline) -> None:
        self.dev = dev
        self.env = dev.env
        self.addr = dev.env["KMSD_ADDR"]
        self.cfg = cfg
        self.deadline = deadline
        self.run_dir = Path(tempfile.mkdtemp(prefix="kmsagent-bench-", dir="/tmp"))
        self.http: aiohttp.ClientSession  # made in setup(), inside the event loop
        self.token = ""
        self.rotated = ""  # the current version id of ROTATED
        self.agents: list[AgentProc] = []
        self.fleet: Fleet | None = None
        self.out: dict[str, Any] = {}
        self.reads_agent_rss: dict[str, dict[str, int]] = {}

    # -- helpers -----------------------------------------------------------------------------

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

    async def start_agent(self, name: str, path: str) -> AgentProc:
        agent = AgentProc(name, path, self.run_dir, self.env)
        self.agents.append(agent)  # before any wait: a failed start is still stopped
        await self.until(agent.healthy, f"{name} to sync", 0.01)
        return agent

    async def stop_agent(self, agent: AgentProc) -> None:
        self.agents.remove(agent)
        await agent.close()

    # -- set-up ------------------------------------------------------------------------------

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

    # -- 1. reads ----------------------------------------------------------------------------

    def placement(self, agent: AgentProc) -> dict[int, set[int]]:
        """The agent alone on AGENT_CPU; kmsd dev (kmsd, moto) and its PostgreSQL on LOAD_CPU."""
        postmaster = int((self.dev.data_dir / "pg" / "postmaster.pid").read_text().split()[0])
        others = [self.dev.proc.pid, postmaster, *children_of(postmaster)]
        return {
            **{tid: {LOAD_CPU} for tid in threads_of(others)},
            **{tid: {AGENT_CPU} for tid in threads_of([agent.pid])},
        }

    def _load_pool(self) -> ProcessPoolExecutor:
        """One load-generator process on LOAD_CPU (spawned: this process has threads)."""
        return ProcessPoolExecutor(
            1,
            mp_context=mp.get_context("spawn"),
            initializer=_agent_load.pin,
            initargs=({LOAD_CPU},),
        )

    async def _least_disturbed(
        self, pool: ProcessPoolExecutor, agent: AgentProc, fn: Callable[..., Any], arg: float
    ) -> dict[str, Any]:
        """Run one load shape; again (up to READ_ATTEMPTS) while CPU 0 was busy with others.

        The machine is shared: another process scheduled on CPU 0 keeps the agent waiting
        (its run-queue wait, from /proc/PID/schedstat). The attempt with the least wait is
        kept; every attempt's wait is reported.
        """
        loop = asyncio.get_running_loop()
        attempts: list[dict[str, Any]] = []
        for _ in range(READ_ATTEMPTS):
            self.deadline.left(self.cfg.read_s + 30)
            cpu0, (wait0, preempted0) = cpu_s(agent.pid), waited(agent.pid)
            result = await loop.run_in_executor(
                pool, fn, agent.socket, READ_URL, arg, self.cfg.read_s
            )
            # Warm-up requests included: the CPU per request is a slight over-estimate.
            agent_cpu = cpu_s(agent.pid) - cpu0
            wait1, preempted1 = waited(agent.pid)
            result["agent_cpu_us_per_req"] = round(agent_cpu / result["requests"] * 1e6, 1)
            result["agent_runqueue_wait_ms"] = round((wait1 - wait0) * 1000, 1)
            result["agent_preempted"] = preempted1 - preempted0
            attempts.append(result)
            quiet = result["agent_runqueue_wait_ms"] <= QUIET_WAIT_SHARE * self.cfg.read_s * 1000
            if quiet or self.deadline.end - time.monotonic() < RESERVE_S:
                break
        best = min(attempts, key=lambda r: r["agent_runqueue_wait_ms"])
        best["attempts_wait_ms"] = [r["agent_runqueue_wait_ms"] for r in attempts]
        return best

    async def reads(self, agent: AgentProc) -> None:
        cfg = self.cfg
        runs: list[dict[str, Any]] = []
        shapes: list[tuple[Callable[..., dict[str, Any]], float]] = [
            (_agent_load.closed, c) for c in cfg.concurrencies
        ]
        shapes.append((_agent_load.paced, PACED_RATE))
        with self._load_pool() as pool, pinned(self.placement(agent)):
            for fn, arg in shapes:
                runs.append(await self._least_disturbed(pool, agent, fn, arg))
            # Again with the agent real-time (SCHED_FIFO): other work on this shared machine
            # can no longer preempt it, as if CPU 0 were its own.
            with realtime(threads_of([agent.pid]), 10):
                alone = await self._least_disturbed(pool, agent, _agent_load.paced, PACED_RATE)
        closed = runs[:-1]
        paced = runs[-1]
        good = [r for r in closed if r["p99_ms"] <= 2.0 and r["errors"] == 0]
        best = max(good or closed, key=lambda r: r["rps"])
        self.out["reads"] = {
            "secret_bytes": len(json.dumps(value(0))),
            "closed_loop": closed,
            "paced": paced,
            "paced_agent_realtime": alone,
            "best": {k: best[k] for k in ("concurrency", "rps", "p50_ms", "p99_ms")},
            "target": {"p99_ms": 2.0, "rps": 3000},
            "met": bool(good) and best["rps"] >= 3000,
            "paced_met": paced["p99_ms"] <= 2.0 and paced["errors"] == 0,
        }

    # -- 2. propagation ----------------------------------------------------------------------

    async def propagation(self, agent: AgentProc) -> None:
        from_ack: list[float] = []
        from_send: list[float] = []
        for k in range(self.cfg.changes):
            await self.until(lambda: self.held_polls(1), "the agent's poll held by kmsd", 0.002)
            _, doc = await agent.get("/v1/version")
            _, had = await agent.get(f"/v1/secrets/{ROTATED}")
            app = asyncio.create_task(
                self._app_waits(agent, doc["path_version"], had["version_id"])
            )
            try:
                await self.until(
                    lambda: self._local_watchers(agent, 1), "the application's poll held", 0.002
                )
                sent = time.monotonic_ns()
                version_id = await self.put(APP, ROTATED, value(k + 1))
                acked = time.monotonic_ns()
                app_version, served = await asyncio.wait_for(app, self.deadline.left(10))
            finally:
                app.cancel()
            if app_version != version_id:
                raise RuntimeError(f"change {k}: the agent served {app_version}, not {version_id}")
            from_ack.append((served - acked) / 1e6)
            from_send.append((served - sent) / 1e6)
        p50, p99 = ms(from_ack, 0.5), ms(from_ack, 0.99)
        self.out["propagation"] = {
            "changes": len(from_ack),
            "from_put_answer": {"p50_ms": p50, "p99_ms": p99, "max_ms": ms(from_ack, 1)},
            "from_put_sent": {
                "p50_ms": ms(from_send, 0.5),
                "p99_ms": ms(from_send, 0.99),
                "max_ms": ms(from_send, 1),
            },
            "target_ms": {"p50": 100, "p99": 250},
            "met": p50 <= 100 and p99 <= 250,
        }

    async def _local_watchers(self, agent: AgentProc, n: int) -> bool:
        return await agent.metric("kmsagent_local_watchers") == n

    async def _app_waits(self, agent: AgentProc, since: int, had: str) -> tuple[str, int]:
        """An application: long poll the agent, then read until it has a new version."""
        while True:
            status, doc = await agent.get(f"/v1/watch?since={since}&timeout=30")
            if status == 200:
                since = doc["path_version"]
            status, secret = await agent.get(f"/v1/secrets/{ROTATED}")
            if status == 200 and secret["version_id"] != had:
                return str(secret["version_id"]), time.monotonic_ns()

    # -- 3. rss ------------------------------------------------------------------------------

    async def rss(self, reads_agent: AgentProc) -> None:
        cfg = self.cfg
        sem = asyncio.Semaphore(8)

        async def put(i: int) -> None:
            async with sem:
                await self.put(RSS_APP, f"s{i:03d}", value(i))

        await asyncio.gather(*(put(i) for i in range(cfg.rss_secrets)))
        agent = await self.start_agent("agent-rss", RSS_APP)
        try:
            healthy = proc_status(agent.pid)
            for i in range(cfg.rss_reads):
                if i % 5 == 0:
                    status, doc = await agent.get("/v1/secrets")
                    ok = status == 200 and len(doc["secrets"]) == cfg.rss_secrets
                else:
                    status, doc = await agent.get(f"/v1/secrets/s{i % cfg.rss_secrets:03d}")
                    ok = status == 200
                if not ok:
                    raise RuntimeError(f"rss agent answered {status}: {doc}")
            after = proc_status(agent.pid)
        finally:
            await self.stop_agent(agent)
        breakdown = await asyncio.to_thread(self._breakdown)
        rss_mib = mib(max(healthy["rss_kib"], after["rss_kib"]))
        self.out["rss"] = {
            "secrets": cfg.rss_secrets,
            "healthy": healthy,
            "after_reads": {"reads": cfg.rss_reads, **after},
            "rss_mib": rss_mib,
            # The agent of scenarios 1-2 (3 secrets): healthy, after the reads, after the changes.
            "reads_agent_3_secrets": {**self.reads_agent_rss, "now": proc_status(reads_agent.pid)},
            "startup_breakdown": breakdown,
            "target_mib": 60,
            "met": rss_mib <= 60,
        }

    def _breakdown(self) -> dict[str, Any]:
        script = Path(__file__).resolve().parent / "_agent_rss.py"
        env = {**os.environ, "AWS_ENDPOINT_URL": self.env["AWS_ENDPOINT_URL"]}
        done = subprocess.run(
            [sys.executable, str(script)],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"_agent_rss.py failed: {done.stderr[-2000:]}")
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc

    # -- 4. fleet ----------------------------------------------------------------------------

    async def fleet_run(self) -> None:
        cfg = self.cfg
        n = cfg.fleet_workers * cfg.fleet_per_worker
        self.fleet = fleet = Fleet(cfg.fleet_workers)
        agent_env = {k: self.env[k] for k in ("KMSD_ADDR", "KMSD_SERVER_ID", "AWS_ENDPOINT_URL")}
        agent_env |= {
            "AWS_DEFAULT_REGION": self.env["AWS_DEFAULT_REGION"],
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        started = time.monotonic()
        replies = await fleet.each(
            "start",
            [
                {
                    "count": cfg.fleet_per_worker,
                    "path": APP,
                    "secret": ROTATED,
                    "env": agent_env,
                    "creds_file": str(self.run_dir / "host-credentials"),
                    "log_file": str(self.run_dir / f"fleet-{w}.log"),
                    "starting": cfg.fleet_starting,
                    "deadline_s": self.deadline.left(150),
                }
                for w in range(cfg.fleet_workers)
            ],
        )
        synced = sum(r["synced"] for r in replies)
        if synced != n:
            status = await fleet.all("status")
            raise RuntimeError(f"fleet: {synced} of {n} agents synced: {status}")
        start_s = round(time.monotonic() - started, 1)
        rounds = []
        for k in range(cfg.fleet_rounds):
            rounds.append(await self._fleet_round(fleet, n, k))
        status = await fleet.all("status")
        worst = max(rounds, key=lambda r: r["served"]["max_ms"])
        within = min(r["within_5s"] for r in rounds)
        self.out["fleet"] = {
            "agents": n,
            "workers": cfg.fleet_workers,
            "start_s": start_s,
            "rounds": rounds,
            "worst_round": {
                "served_p50_ms": worst["served"]["p50_ms"],
                "served_p99_ms": worst["served"]["p99_ms"],
                "served_max_ms": worst["served"]["max_ms"],
                "within_5s": within,
            },
            "errors": sum(s["errors"] for s in status),
            "logins": sum(s["logins"] for s in status),
            "target": f"all {n} within {FLEET_DEADLINE_S:g} s",
            "met": within == n,
        }

    async def _fleet_round(self, fleet: Fleet, n: int, k: int) -> dict[str, Any]:
        await self.until(lambda: self.held_polls(n), f"{n} fleet polls held", 0.02)
        # The polls' adoption reports written (this call flushes them): all agents hold the
        # current version, by kmsd's own account.
        adoption = await self.api("GET", f"/v1/adoption/{APP}")
        (secret,) = [s for s in adoption["secrets"] if s["name"] == ROTATED]
        holders = [v["instances"] for v in secret["versions"] if v["version_id"] == self.rotated]
        holding = sum(1 for i in (holders or [[]])[0] if i.startswith("fleet-"))
        if holding != n:
            raise RuntimeError(f"round {k}: adoption shows {holding} of {n} agents up to date")
        dev = self.dev.proc.pid
        cpu0 = (cpu_s(dev), main_thread_cpu_s(dev), fleet.cpu_s())
        sent = time.monotonic_ns()
        version_id = await self.put(APP, ROTATED, value(100 + k))
        acked = time.monotonic_ns()
        replies = await fleet.all(
            "wait", version_id=version_id, deadline_s=self.deadline.left(WAIT_S)
        )
        cpu = [
            round((b - a) * 1000)
            for a, b in zip(cpu0, (cpu_s(dev), main_thread_cpu_s(dev), fleet.cpu_s()), strict=True)
        ]
        times = [t for r in replies for t in r["times"]]
        if len(times) != n:
            raise RuntimeError(f"round {k}: {len(times)} of {n} agents served {version_id}")
        served = [(p - acked) / 1e6 for _, p in times]
        answered = [(a - acked) / 1e6 for a, _ in times if a]
        fetch = [(p - a) / 1e6 for a, p in times if a]
        return {
            "put_ms": round((acked - sent) / 1e6, 1),
            "served": {
                "p50_ms": ms(served, 0.5),
                "p99_ms": ms(served, 0.99),
                "max_ms": ms(served, 1),
                "max_from_put_sent_ms": round(max(served) + (acked - sent) / 1e6, 2),
            },
            "within_5s": sum(1 for s in served if s <= FLEET_DEADLINE_S * 1000),
            # The long poll's answer read by the agent (negative: before the PUT returned).
            "poll_answered": {
                "p50_ms": ms(answered, 0.5),
                "max_ms": ms(answered, 1),
                "max_from_put_sent_ms": round(max(answered) + (acked - sent) / 1e6, 2),
            },
            # Poll answered -> view published: the GetSecretValue from moto, and waiting for it.
            "answer_to_served": {"p50_ms": ms(fetch, 0.5), "max_ms": ms(fetch, 1)},
            # kmsd dev's main thread is kmsd's event loop; its other threads are moto's server.
            "cpu_ms": {"kmsd": cpu[1], "moto": cpu[0] - cpu[1], "fleet_workers": cpu[2]},
        }


def value(n: int) -> dict[str, Any]:
    """A JSON secret of about 200 bytes; ``n`` tells versions apart."""
    return {"n": n, "password": f"{n:08d}" + "x" * 170}


def raise_fd_limit(want: int) -> dict[str, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        soft = min(want, hard) if hard != resource.RLIM_INFINITY else want
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return {"soft": soft, "hard": hard}


def summary(out: dict[str, Any]) -> str:
    r, p, m, f = out["reads"], out["propagation"], out["rss"], out["fleet"]
    missed = [k for k, v in out.items() if isinstance(v, dict) and v.get("met") is False]
    return (
        f"kmsagent: reads {r['best']['rps']:,.0f} req/s p99 {r['best']['p99_ms']} ms "
        f"(c={r['best']['concurrency']}), paced {r['paced']['rate']:g}/s p99 "
        f"{r['paced']['p99_ms']} ms (agent real-time: {r['paced_agent_realtime']['p99_ms']} ms); "
        f"put -> served p50 {p['from_put_answer']['p50_ms']} ms "
        f"p99 {p['from_put_answer']['p99_ms']} ms; {f['agents']} agents: last served "
        f"{f['worst_round']['served_max_ms']} ms after the PUT ({f['worst_round']['within_5s']} "
        f"within 5 s); RSS {m['rss_mib']} MiB with {m['secrets']} secrets; "
        f"targets missed: {', '.join(missed) or 'none'}"
    )


async def scenarios(bench: Bench) -> None:
    await bench.setup()
    bench.out["setup_s"] = round(time.monotonic() - STARTED, 1)
    agent = await bench.start_agent("agent-a", APP)
    bench.reads_agent_rss["healthy"] = proc_status(agent.pid)
    await bench.reads(agent)
    bench.reads_agent_rss["after_reads"] = proc_status(agent.pid)
    await bench.propagation(agent)
    await bench.rss(agent)
    await bench.stop_agent(agent)
    await bench.fleet_run()


STARTED = time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a ~20 s smoke run")
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL
    deadline = Deadline(TOTAL_S)
    fd_limit = raise_fd_limit(8192)  # kmsd dev inherits it: one socket per fleet agent
    dev = Dev()
    bench: Bench | None = None
    try:
        bench = Bench(dev, cfg, deadline)
        bench.out.update(
            {
                "bench": "agent",
                "quick": args.quick,
                "fd_limit": fd_limit,
                "cpus": os.cpu_count(),
                # Other work on the machine shows here (the figures share its two cores).
                "loadavg_at_start": os.getloadavg()[0],
            }
        )

        async def run() -> None:
            assert bench is not None
            try:
                await asyncio.wait_for(scenarios(bench), deadline.left(TOTAL_S))
            finally:
                await bench.close()
                if bench.fleet is not None:
                    bench.fleet.close()

        asyncio.run(run())
    finally:
        if bench is not None and bench.fleet is not None:
            bench.fleet.close()
        dev.stop()
    assert bench is not None
    bench.out["elapsed_s"] = round(time.monotonic() - STARTED, 1)
    bench.out["loadavg_at_end"] = os.getloadavg()[0]
    print(json.dumps(bench.out))
    print(summary(bench.out))


if __name__ == "__main__":
    main()
