"""The local listeners' SSRF tokens: read from a file only the agent's user can touch, or made.

Whoever can read the token can defeat the SSRF fence; whoever can write it or swap the file (a
symlink, a file owned by another user) can choose the token.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from kmsd.errors import InvalidInput


def token_file_problem(mode: int, uid: int, euid: int) -> str | None:
    """Why an existing token file cannot be trusted (from its ``lstat``/``fstat``), or None.

    Whoever can read the token can defeat the SSRF fence; whoever can write it or swap the
    file (a symlink, a file owned by another user) can choose the token.
    """
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    if uid != euid:
        return f"is owned by uid {uid}, not by this agent's user (uid {euid})"
    if mode & 0o077:
        return f"has mode {stat.S_IMODE(mode):04o}; group and others must have no access (0600)"
    return None


def read_token(path: Path) -> str:
    """The SSRF token: read it from a file only this user can touch, or make one (0600)."""
    try:
        # O_NOFOLLOW: a symlink fails with ELOOP; O_NONBLOCK: a FIFO planted there cannot hang us.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return _new_token(path)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise InvalidInput(f"token file {path} is a symbolic link; refusing it") from None
    try:
        info = os.fstat(fd)  # the file opened, not whatever the path names by now
        problem = token_file_problem(info.st_mode, info.st_uid, os.geteuid())
        if problem is not None:
            raise InvalidInput(f"token file {path} {problem}; refusing it")
        token = os.read(fd, 4096).strip().decode("ascii", "replace")
    finally:
        os.close(fd)
    if not token:
        raise InvalidInput(f"token file {path} is empty; remove it to have a new one made")
    return token


def _new_token(path: Path) -> str:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    # O_EXCL|O_NOFOLLOW: never write through a file or symlink someone planted meanwhile.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def compat_token(token_file: str) -> str:
    """The SM Agent API's token, as AWS's agent takes it: ``AWS_TOKEN`` (the token, or
    ``file://PATH``), else the token file."""
    given = os.environ.get("AWS_TOKEN", "")
    if given.startswith("file://"):
        return read_token(Path(given.removeprefix("file://")))
    if given:
        return given
    return read_token(Path(token_file))
