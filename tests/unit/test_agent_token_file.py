"""The localhost token file: made exclusively, trusted only if no one else can touch it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kmsagent.tokens import read_token, token_file_problem
from kmsd.errors import InvalidInput

ME = 1000
REG = stat.S_IFREG

# (mode, owner uid, the reason it is refused or None)
TABLE = [
    (REG | 0o600, ME, None),
    (REG | 0o400, ME, None),
    (REG | 0o640, ME, "group and others"),
    (REG | 0o604, ME, "group and others"),
    (REG | 0o620, ME, "group and others"),
    (REG | 0o602, ME, "group and others"),
    (REG | 0o600, 0, "owned by uid 0"),
    (stat.S_IFLNK | 0o777, ME, "symbolic link"),
    (stat.S_IFIFO | 0o600, ME, "not a regular file"),
    (stat.S_IFDIR | 0o700, ME, "not a regular file"),
    (stat.S_IFCHR | 0o600, ME, "not a regular file"),
]


@pytest.mark.parametrize(("mode", "uid", "reason"), TABLE)
def test_which_token_files_are_trusted(mode: int, uid: int, reason: str | None) -> None:
    problem = token_file_problem(mode, uid, ME)
    if reason is None:
        assert problem is None
    else:
        assert problem is not None
        assert reason in problem


def test_a_new_token_file_is_made_0600_and_then_read_back(tmp_path: Path) -> None:
    path = tmp_path / "run" / "token"
    token = read_token(path)
    assert len(token) >= 43  # 256 bits
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_token(path) == token


def test_a_symlink_planted_at_the_path_is_refused_and_not_written_through(
    tmp_path: Path,
) -> None:
    target = tmp_path / "elsewhere"
    path = tmp_path / "token"
    path.symlink_to(target)  # dangling: the old code created `target` through it
    with pytest.raises(InvalidInput, match="symbolic link"):
        read_token(path)
    assert not target.exists()


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("known-to-everyone\n")
    os.chmod(path, 0o644)
    with pytest.raises(InvalidInput, match="mode 0644"):
        read_token(path)
