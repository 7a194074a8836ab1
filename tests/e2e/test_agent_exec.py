"""kmsagent exec end to end: a command with secrets in its environment, restarted by a put,
its signals and exit status passed through, counted by pid in adoption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REGION, SERVER_ID, Identity
from tests.e2e.harness import BIN, DEADLINE_S, Ops, Replica, credentials_file, wait_until

pytestmark = pytest.mark.e2e

# The application: it knows nothing of kmsd. It notes its pid and what it got, and each signal.
CHILD = """
import json, os, signal, sys, time
out = sys.argv[1]
def note(what):
    with open(out, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "what": what}) + "\\n")
note({"DB_PASSWORD": os.environ.get("DB_PASSWORD"), "DB_USER": os.environ.get("DB_USER")})
signal.signal(signal.SIGUSR1, lambda *_: note("USR1"))
signal.signal(signal.SIGHUP, lambda *_: note("HUP"))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(int(os.environ.get("EXIT_ON_TERM", "0"))))
while True:
    time.sleep(0.05)
"""


class Exec:
    def __init__(
        self, kmsd: Replica, moto: str, creds: Path, workdir: Path, *extra: str, env: str = ""
    ) -> None:
        self.out = workdir / "child.jsonl"
        self.log = workdir / "kmsagent.log"
        script = workdir / "child.py"
        script.write_text(CHILD)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KMSD_"))}
        argv = [
            str(BIN / "kmsagent"), "exec", "--path", "prod/shop",
            "--kmsd-addr", kmsd.addr, "--server-id", SERVER_ID,
            "--credentials", "file", "--credentials-file", str(creds),
            "--instance-id", "vm-exec", "--restart-jitter", "0", "--grace", "5",
            *extra, "--", sys.executable, str(script), str(self.out),
        ]  # fmt: skip
        with self.log.open("a") as sink:
            self.proc = subprocess.Popen(
                argv,
                env={
                    **base,
                    "AWS_ENDPOINT_URL": moto,
                    "AWS_DEFAULT_REGION": REGION,
                    "AWS_EC2_METADATA_DISABLED": "true",
                    **({"EXIT_ON_TERM": env} if env else {}),
                },
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )

    def notes(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line]

    def started(self) -> list[dict[str, Any]]:
        return [n for n in self.notes() if isinstance(n["what"], dict)]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=DEADLINE_S)


@pytest.fixture
def shop(
    kmsd: Replica, admin: Identity, moto_endpoint: str, make_user: Any, tmp_path: Path
) -> tuple[Ops, Path]:
    ops = Ops(kmsd, admin, moto_endpoint)
    host = make_user(f"exec-host-{uuid.uuid4().hex[:8]}")
    ops("node", "create", "prod/shop", "--parents")
    ops("app", "bind", "prod/shop", "--role", host.arn)
    ops.put("prod/shop", "db", {"user": "shop", "password": "first"})
    creds = tmp_path / "credentials"
    credentials_file(creds, host, 0o600)
    return ops, creds


def test_a_put_restarts_the_command_with_the_new_value(
    kmsd: Replica, shop: tuple[Ops, Path], moto_endpoint: str, tmp_path: Path
) -> None:
    ops, creds = shop
    run = Exec(
        kmsd, moto_endpoint, creds, tmp_path,
        "--env", "DB_PASSWORD=db.password", "--env", "DB_USER=db.user",
    )  # fmt: skip
    try:
        wait_until(lambda: len(run.started()) == 1, "the command to start")
        first = run.started()[0]
        assert first["what"] == {"DB_PASSWORD": "first", "DB_USER": "shop"}

        # Signals sent to the agent reach the command.
        run.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: any(n["what"] == "USR1" for n in run.notes()), "USR1 forwarded")

        # Adoption counts the command by its pid, though it never sent a header.
        def counted(pid: int) -> bool:
            doc = ops.json("adoption", "prod/shop")
            (me,) = [i for i in doc["instances"] if i["instance_id"] == "vm-exec"] or [None]
            return me is not None and any(
                k.startswith(f"{pid}@") and v == {"db": version} for k, v in me["processes"].items()
            )

        version = ops.json("secret", "show", "prod/shop", "db")["versions"][0]["version_id"]
        wait_until(lambda: counted(first["pid"]), "the command counted by pid")

        version = ops.put("prod/shop", "db", {"user": "shop", "password": "second"})
        wait_until(lambda: len(run.started()) == 2, "the restart")
        second = run.started()[1]
        assert second["what"] == {"DB_PASSWORD": "second", "DB_USER": "shop"}
        assert second["pid"] != first["pid"]
        wait_until(lambda: counted(second["pid"]), "the new command counted")
    finally:
        assert run.stop() == 0
    log = run.log.read_text()
    assert "first" not in log
    assert "second" not in log


def test_signal_policy_and_a_pending_version_that_changes_nothing(
    kmsd: Replica, shop: tuple[Ops, Path], moto_endpoint: str, tmp_path: Path
) -> None:
    ops, creds = shop
    run = Exec(
        kmsd, moto_endpoint, creds, tmp_path,
        "--env", "DB_PASSWORD=db.password", "--on-change", "signal:HUP",
    )  # fmt: skip
    try:
        wait_until(lambda: len(run.started()) == 1, "the command to start")
        # A rotation's pending version: the environment (current versions) is unchanged.
        rotation = ops.json(
            "rotate", "start", "prod/shop", "db", "--value", '{"user":"shop","password":"r"}'
        )
        rid = str(rotation["id"])

        def pending_held() -> bool:
            gate = ops.json("rotate", "status", rid)["gate"]
            return bool(gate["met"]) and gate["counts"]["held"] == 1

        wait_until(pending_held, "the agent to hold the pending version (gate 1)")
        assert not any(n["what"] == "HUP" for n in run.notes())  # pending: no signal
        ops("rotate", "advance", rid)  # promote
        wait_until(lambda: any(n["what"] == "HUP" for n in run.notes()), "HUP on promotion")
        hups = [n for n in run.notes() if n["what"] == "HUP"]
        assert len(hups) == 1  # the pending version did not signal, the promotion did
        assert len(run.started()) == 1  # signalled, not restarted
    finally:
        run.stop()


def test_the_commands_exit_status_is_the_agents(
    kmsd: Replica, shop: tuple[Ops, Path], moto_endpoint: str, tmp_path: Path
) -> None:
    _, creds = shop
    run = Exec(kmsd, moto_endpoint, creds, tmp_path, "--env-all", env="7")
    wait_until(lambda: len(run.started()) == 1, "the command to start")
    assert run.started()[0]["what"] == {"DB_PASSWORD": "first", "DB_USER": "shop"}
    assert run.stop() == 7  # SIGTERM forwarded; the command chose 7


def test_a_missing_secret_is_one_line_and_status_2(
    kmsd: Replica, shop: tuple[Ops, Path], moto_endpoint: str, tmp_path: Path
) -> None:
    _, creds = shop
    run = Exec(kmsd, moto_endpoint, creds, tmp_path, "--env", "X=nope")
    assert run.proc.wait(timeout=DEADLINE_S) == 2
    last = run.log.read_text().strip().splitlines()[-1]
    assert last == "kmsagent: --env X: no secret 'nope' with a value"
    assert run.notes() == []


# An unmodified reader: a one-shot HTTP GET on the agent's socket, no X-App-Process-Id.
READER = """
import http.client, json, socket, sys
from kmsagent.peers import process_id
import os
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
c = http.client.HTTPConnection("kmsagent")
c.sock = s
c.request("GET", "/v1/secrets/db")
doc = json.loads(c.getresponse().read())
print(json.dumps({"me": process_id(os.getpid()), "version": doc["version_id"]}))
"""


def _read_plainly(sock: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", READER, str(sock)],
        capture_output=True,
        timeout=DEADLINE_S,
        check=True,
    )
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def test_a_rotation_counts_the_command_and_a_plain_reader_by_pid(
    kmsd: Replica, shop: tuple[Ops, Path], moto_endpoint: str, tmp_path: Path
) -> None:
    ops, creds = shop
    sock = tmp_path / "agent.sock"
    run = Exec(
        kmsd, moto_endpoint, creds, tmp_path,
        "--env", "DB_PASSWORD=db.password", "--socket", str(sock),
    )  # fmt: skip
    try:
        wait_until(lambda: len(run.started()) == 1 and sock.exists(), "the command and socket")
        before = _read_plainly(sock)
        rotation = ops.json(
            "rotate", "start", "prod/shop", "db", "--mode", "auto",
            "--value", '{"user": "shop", "password": "rotated"}',
        )  # fmt: skip
        rid, new = str(rotation["id"]), rotation["new_version"]
        wait_until(
            lambda: ops.json("rotate", "status", rid)["phase"] == "done", "the rotation's gates"
        )
        wait_until(lambda: len(run.started()) == 2, "the command restarted at promotion")
        assert run.started()[1]["what"]["DB_PASSWORD"] == "rotated"
        after = _read_plainly(sock)
        assert (before["version"], after["version"]) == (rotation["old_version"], new)

        def counted() -> dict[str, str]:
            doc = ops.json("adoption", "prod/shop")
            (me,) = [i for i in doc["instances"] if i["instance_id"] == "vm-exec"]
            return {pid: read["db"] for pid, read in me["processes"].items() if "db" in read}

        child = run.started()[1]["pid"]
        wait_until(
            lambda: (
                counted().get(after["me"]) == new
                and any(p.startswith(f"{child}@") and v == new for p, v in counted().items())
            ),
            "the restarted command and the plain reader counted by pid, on the new version",
        )
        assert counted().get(before["me"]) == rotation["old_version"]  # what it read, then
    finally:
        run.stop()
