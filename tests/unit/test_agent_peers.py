"""Who is at the other end of a local connection: real sockets, this very process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kmsagent.peers import peer_process, process_id, tcp_inode, unix_peer

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def test_a_process_id_carries_the_start_time() -> None:
    mine = process_id(os.getpid())
    assert mine is not None
    pid, _, start = mine.partition("@")
    assert (int(pid), start.isdigit()) == (os.getpid(), True)
    assert process_id(os.getpid()) == mine  # stable for the life of the process


def test_a_reused_pid_is_another_process() -> None:
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        seen = process_id(first.pid)
        assert seen is not None
        assert seen.startswith(f"{first.pid}@")
    finally:
        first.kill()
        first.wait()
    assert process_id(first.pid) is None  # gone: nothing to attribute a read to


def test_the_unix_peer_is_the_connecting_process() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert unix_peer(right) == os.getpid()
        assert peer_process(right) == process_id(os.getpid())


@pytest.fixture
def loopback() -> Iterator[tuple[socket.socket, socket.socket]]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        yield client, accepted
    finally:
        for s in (client, accepted, server):
            s.close()


def test_the_tcp_peer_is_found_through_proc(loopback: tuple[socket.socket, socket.socket]) -> None:
    client, accepted = loopback
    found = tcp_inode(accepted.getsockname(), accepted.getpeername())
    assert found == (os.fstat(client.fileno()).st_ino, os.getuid())
    assert peer_process(accepted) == process_id(os.getpid())


def test_a_child_reading_over_tcp_is_told_apart(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import socket, sys; s = socket.create_connection(('127.0.0.1', {port}));"
            " sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
    )
    try:
        accepted, _ = server.accept()
        with accepted:
            assert peer_process(accepted) == process_id(child.pid)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
        server.close()
