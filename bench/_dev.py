"""Shared by the benchmarks: start ``kmsd dev`` in a fresh folder and sign in."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


async def serve_commands(conn: Connection, owner: Any) -> None:
    """Answer a parent's commands over a pipe until it says "exit" or hangs up.

    Each ``(name, kwargs)`` runs ``owner.cmd_<name>(**kwargs)`` and sends back its result, or
    ``{"error": ...}`` (the parent fails the run). A thread blocks on the pipe so that the
    worker's event loop never does.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    def reader() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                msg = ("exit", {})
            loop.call_soon_threadsafe(queue.put_nowait, msg)
            if msg[0] == "exit":
                return

    threading.Thread(target=reader, daemon=True).start()
    while True:
        name, kwargs = await queue.get()
        if name == "exit":
            return
        try:
            reply: Any = await getattr(owner, f"cmd_{name}")(**kwargs)
        except Exception as exc:  # reported to the parent, which fails the run
            reply = {"error": f"{name}: {exc!r}"}
        conn.send(reply)


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Dev:
    """``kmsd dev`` in a child process; ``ready_s`` is the time from spawn to the ready line."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="kmsd-bench-", dir="/tmp"))
        self.port = free_port()
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(BIN / "kmsd"), "dev", "--port", str(self.port), "--data-dir", str(self.data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "kmsd ready on" in line:
                break
        else:
            raise RuntimeError("kmsd dev exited before it was ready")
        self.ready_s = time.monotonic() - started
        self.env = dict(
            line.removeprefix("export ").split("=", 1)
            for line in (self.data_dir / "env").read_text().splitlines()
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def login_body(env: dict[str, str]) -> dict[str, Any]:
    from botocore.credentials import Credentials

    from kmsd.aws.login import sign_login

    creds = Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    return sign_login(
        creds,
        region=env["AWS_DEFAULT_REGION"],
        sts_endpoint=env["AWS_ENDPOINT_URL"],
        server_id=env["KMSD_SERVER_ID"],
    )
