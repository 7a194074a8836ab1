"""kmsagent against hostile input: a token file it must not trust, and a kmsd that misbehaves.

The stand-in "kmsd" here is a tiny aiohttp app in the test: it plays an attacker (or a broken
kmsd), answering sign-in and then whatever the test wants, so the agent's handling of those
answers is what is exercised, over real HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

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
