"""Which local process is on the other end of a connection, for adoption without app changes.

An application that sends no ``X-App-Process-Id`` is still counted by the process that reads:
on the Unix socket the kernel tells us the peer's pid (``SO_PEERCRED``); on loopback TCP the
connection's socket inode is looked up in ``/proc/net/tcp`` and then among ``/proc/*/fd``
(which needs the agent to run as root or as the reader's user; otherwise the read is simply
not attributed). The id is ``PID@START``, START being the process's start time in clock ticks
since boot (``/proc/PID/stat``), so a reused pid is never taken for the process before it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from pathlib import Path

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
PROC = Path("/proc")


def process_id(pid: int, proc: Path = PROC) -> str | None:
    """``PID@START`` for a live process, or None if it is gone (or /proc is not there)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
    fields = stat[stat.rindex(")") + 2 :].split()
    return f"{pid}@{fields[19]}"  # field 22 of stat(5), counting from the state (field 3)


def unix_peer(sock: socket.socket) -> int | None:
    """The pid at the other end of a Unix stream socket."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    pid = _PEERCRED.unpack(raw)[0]
    return pid if pid > 0 else None


def _hex_endpoint(host: str, port: int) -> str:
    """An IPv4 endpoint as /proc/net/tcp writes it: little-endian address, then the port."""
    packed = socket.inet_aton(host)
    return f"{struct.unpack('<I', packed)[0]:08X}:{port:04X}"


def tcp_inode(
    local: tuple[str, int], remote: tuple[str, int], proc: Path = PROC
) -> tuple[int, int] | None:
    """The inode and owner uid of the client's socket of the loopback connection
    ``remote -> local``.

    The agent sees (its address, the client's); the client's socket is the row whose local
    end is the client's address and whose remote end is the agent's.
    """
    want_local, want_remote = _hex_endpoint(*remote), _hex_endpoint(*local)
    try:
        lines = (proc / "net" / "tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 9 and fields[1] == want_local and fields[2] == want_remote:
            inode = int(fields[9])
            return (inode, int(fields[7])) if inode else None
    return None


def inode_owner(inode: int, uid: int | None = None, proc: Path = PROC) -> int | None:
    """The pid of a process holding socket ``inode`` open (the first one found); only the
    processes of ``uid`` (the socket's owner) are searched when it is given."""
    target = f"socket:[{inode}]"
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        if uid is not None:
            try:
                if entry.stat().st_uid != uid:
                    continue
            except OSError:
                continue
        with contextlib.suppress(OSError), os.scandir(entry / "fd") as fds:
            for fd in fds:
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) == target:
                        return int(entry.name)
    return None


def tcp_peer(sock: socket.socket) -> int | None:
    """The pid at the other end of a loopback TCP connection, when /proc lets us see it."""
    try:
        local, remote = sock.getsockname(), sock.getpeername()
    except OSError:
        return None
    if sock.family != socket.AF_INET or not str(remote[0]).startswith("127."):
        return None
    found = tcp_inode((local[0], local[1]), (remote[0], remote[1]))
    return None if found is None else inode_owner(*found)


def peer_process(sock: socket.socket | None) -> str | None:
    """``PID@START`` of the local process at the other end of ``sock``, or None."""
    if sock is None:
        return None
    pid = unix_peer(sock) if sock.family == socket.AF_UNIX else tcp_peer(sock)
    return None if pid is None else process_id(pid)
