"""Shared by the benchmarks: start ``kmsd dev`` in a fresh folder and sign in."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


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
