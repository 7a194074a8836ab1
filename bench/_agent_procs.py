"""Processes and CPUs for ``agent.py``: /proc readings, pinning, real-time, the time budget,
and ``kmsagent run`` as a child process.

Everything here reads or steers a process from outside; nothing knows a scenario. Affinity
and scheduling policy are per thread on Linux, so the helpers take thread ids
(``threads_of``), and each gives back what it changed when its block ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from _dev import BIN
from _lean import env_for

WAIT_S = 60.0  # any single condition


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon and RssFile of ``pid``, KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    found = dict(re.findall(r"^(\w+):\s+(\d+) kB", text, re.M))
    names = {"rss_kib": "VmRSS", "hwm_kib": "VmHWM", "anon_kib": "RssAnon", "file_kib": "RssFile"}
    return {k: int(found[v]) for k, v in names.items()}


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


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
    """Pin each thread to its CPUs for the block, then give each back its own affinity.

    A thread started during the block inherits its creator's affinity (the agent's compat
    listener looks peers up on a worker thread it starts on the first TCP connection).
    """
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


class Deadline:
    """The run's time budget: every wait asks it how long it may take."""

    def __init__(self, total_s: float) -> None:
        self.end = time.monotonic() + total_s

    def left(self, cap: float = WAIT_S) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the run exceeded its total time budget")
        return min(cap, left)

    def remaining(self) -> float:
        return self.end - time.monotonic()


class AgentProc:
    """``kmsagent run`` on one path, logging to a file, serving on a Unix socket.

    ``compat_port``: also AWS's Secrets Manager Agent API on 127.0.0.1, its token given as
    ``AWS_TOKEN`` (a value), as AWS's agent takes it. ``bin_dir``: whose ``kmsagent`` (the dev
    venv's, or a lean install's).
    """

    def __init__(
        self,
        name: str,
        path: str,
        run_dir: Path,
        dev_env: dict[str, str],
        *,
        compat_port: int = 0,
        token: str = "",
        bin_dir: Path = BIN,
    ) -> None:
        self.name = name
        self.socket = str(run_dir / f"{name}.sock")
        self.log = run_dir / f"{name}.log"
        self.compat_port = compat_port
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
            str(bin_dir / "kmsagent"), "run", "--path", path,
            "--kmsd-addr", dev_env["KMSD_ADDR"], "--server-id", dev_env["KMSD_SERVER_ID"],
            "--socket", self.socket,
            "--credentials", "file", "--credentials-file", str(run_dir / "host-credentials"),
            "--instance-id", name,
        ]  # fmt: skip
        if compat_port:
            argv += ["--sm-compat-port", str(compat_port)]
            env["AWS_TOKEN"] = token
        env = env_for(bin_dir, env)
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
