"""``kmsd dev``'s env file: what the operator's shell gets, KMSD_DEV_DIR among it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from kmsd.cli.dev import env_lines, operator_env

ROOT = Path(__file__).resolve().parents[2]


def _env(data_dir: Path) -> dict[str, str]:
    return operator_env(
        "http://127.0.0.1:8700",
        "http://127.0.0.1:8701",
        ("AKIAEXAMPLE", "secret/with+chars="),
        host_arn="arn:aws:iam::123456789012:user/kmsd-dev-host",
        data_dir=data_dir,
    )


def test_the_env_file_names_the_data_dir(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert env["KMSD_DEV_DIR"] == str(tmp_path)
    assert {"KMSD_ADDR", "KMSD_SERVER_ID", "AWS_ENDPOINT_URL", "KMSD_DEV_HOST_ARN"} <= set(env)


@pytest.mark.parametrize("folder", ["plain", "with space", "it's"])
def test_a_shell_reads_back_every_value(tmp_path: Path, folder: str) -> None:
    data_dir = tmp_path / folder
    env = _env(data_dir)
    env_file = tmp_path / "env"
    env_file.write_text(env_lines(env))
    names = " ".join(f'"${k}"' for k in env)
    done = subprocess.run(
        ["bash", "-c", f'. "$1" && printf "%s\\n" {names}', "bash", str(env_file)],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.stdout.splitlines() == list(env.values())


def test_the_readme_walkthroughs_find_the_dev_files_through_kmsd_dev_dir() -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- agent-walkthrough -->\s*```sh\n(.*?)```", text, re.S)
    assert block is not None
    assert ".kmsd-dev/" not in block[1]  # would break after kmsd dev --data-dir DIR
    assert '"$KMSD_DEV_DIR"/host-credentials' in block[1]
    assert "kmsd dev --data-dir /tmp/kmsd-dev`, then `. /tmp/kmsd-dev/env`" in text
