"""kmsagent's rendered files end to end: written, rewritten only when a value they use
changes, their command run, a broken template leaving the old file; render --once."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REGION, SERVER_ID, Identity
from tests.e2e.harness import (
    BIN,
    DEADLINE_S,
    AgentProcess,
    Ops,
    Replica,
    credentials_file,
    wait_until,
)

pytestmark = pytest.mark.e2e


def _shop(kmsd: Replica, admin: Identity, moto: str, make_user: Any, tmp: Path) -> tuple[Ops, Path]:
    ops = Ops(kmsd, admin, moto)
    host = make_user(f"tpl-host-{uuid.uuid4().hex[:8]}")
    ops("node", "create", "prod/shop", "--parents")
    ops("app", "bind", "prod/shop", "--role", host.arn)
    ops.put("prod/shop", "db", {"user": "shop", "password": "first"})
    ops.put("prod/shop", "other", {"k": "1"})
    creds = tmp / "credentials"
    credentials_file(creds, host, 0o600)
    return ops, creds


def test_a_template_follows_the_values_it_uses(
    kmsd: Replica, admin: Identity, moto_endpoint: str, make_user: Any, tmp_path: Path
) -> None:
    ops, creds = _shop(kmsd, admin, moto_endpoint, make_user, tmp_path)
    src, dest, ran = tmp_path / "db.tpl", tmp_path / "db.conf", tmp_path / "reloads"
    src.write_text("user={{ secrets.db.user }}\npassword={{ secrets.db.password }}\n")
    reload = f"{sys.executable} -c \"open('{ran}', 'a').write('r')\""
    agent = AgentProcess(
        kmsd_addr=kmsd.addr,
        moto_endpoint=moto_endpoint,
        paths=["prod/shop"],
        workdir=tmp_path / "agent",
        args=[
            "--credentials",
            "file",
            "--credentials-file",
            str(creds),
            "--template",
            f"{src}:{dest}:0640:{reload}",
        ],
    ).wait_ready()
    try:
        wait_until(lambda: dest.exists() and ran.exists(), "the first render and its command")
        assert dest.read_text() == "user=shop\npassword=first\n"
        assert oct(dest.stat().st_mode & 0o777) == "0o640"

        ops.put("prod/shop", "db", {"user": "shop", "password": "second"})
        wait_until(lambda: "second" in dest.read_text(), "the re-render")
        wait_until(lambda: ran.read_text() == "rr", "the command after the re-render")

        # A change to a secret the template does not use: served, but the file stays.
        inode = dest.stat().st_ino
        version = ops.put("prod/shop", "other", {"k": "2"})
        wait_until(
            lambda: agent.get("/v1/secrets/other").body.get("version_id") == version,
            "the agent to serve the unrelated change",
        )
        assert (dest.stat().st_ino, ran.read_text()) == (inode, "rr")

        # A broken template: the old file stays, /healthz says so, and it heals.
        src.write_text("password={{ secrets.db.pasword }}\n")
        ops.put("prod/shop", "db", {"user": "shop", "password": "third"})
        wait_until(lambda: agent.get("/healthz").status == 503, "/healthz to report it")
        assert "second" in dest.read_text()
        assert agent.get("/healthz").body["detail"].startswith(f"template {dest}: UndefinedError")
        metrics = agent.get("/metrics").body
        assert b"kmsagent_problems{what=" in metrics
        src.write_text("password={{ secrets.db.password }}\n")
        ops.put("prod/shop", "other", {"k": "3"})  # any change renders again
        wait_until(lambda: agent.get("/healthz").status == 200, "/healthz to heal")
        assert dest.read_text() == "password=third\n"
    finally:
        log = agent.stop()
    for value in ("first", "second", "third"):
        assert value not in log


def test_render_once_writes_and_exits(
    kmsd: Replica, admin: Identity, moto_endpoint: str, make_user: Any, tmp_path: Path
) -> None:
    _, creds = _shop(kmsd, admin, moto_endpoint, make_user, tmp_path)
    src, dest = tmp_path / "env.tpl", tmp_path / "app.env"
    src.write_text("DB_PASSWORD={{ secrets.db.password }}\n")
    argv = [
        str(BIN / "kmsagent"), "render", "--once", "--path", "prod/shop",
        "--kmsd-addr", kmsd.addr, "--server-id", SERVER_ID,
        "--credentials", "file", "--credentials-file", str(creds),
        "--template", f"{src}:{dest}",
    ]  # fmt: skip
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    done = subprocess.run(argv, env=env, capture_output=True, timeout=DEADLINE_S, check=False)
    assert done.returncode == 0, done.stderr
    assert dest.read_text() == "DB_PASSWORD=first\n"
    src.write_text("{{ secrets.nope }}")
    failed = subprocess.run(argv, env=env, capture_output=True, timeout=DEADLINE_S, check=False)
    assert failed.returncode == 1
    assert failed.stderr.decode().strip().splitlines()[-1].startswith("kmsagent: template ")
    assert dest.read_text() == "DB_PASSWORD=first\n"  # the old file stays
