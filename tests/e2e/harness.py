"""Helpers for end-to-end tests: real ``kmsd serve`` processes and kmsctl, as users run them."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from botocore.credentials import Credentials

from kmsd.aws.login import sign_login
from tests.conftest import REGION, SERVER_ID, Identity, free_port

BIN = Path(sys.executable).parent
DEADLINE_S = 30
CACHE_DIR = Path(tempfile.mkdtemp(prefix="kmsctl-cache-", dir="/tmp"))


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Replica:
    def __init__(self, env: dict[str, str], log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        # Logs go to a file: a pipe nobody reads would fill up and stall the server.
        self.log = log_dir / f"kmsd-{self.port}.log"
        with self.log.open("a") as sink:
            self.proc = subprocess.Popen(
                [str(BIN / "kmsd"), "serve"],
                env={**env, "KMSD_LISTEN": f"127.0.0.1:{self.port}"},
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        wait_until(self.healthy, f"replica on {self.port}")

    def healthy(self) -> bool:
        assert self.proc.poll() is None, (self.proc.returncode, self.log.read_text())
        try:
            with urllib.request.urlopen(self.addr + "/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def held_polls(self) -> float:
        with urllib.request.urlopen(self.addr + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        match = re.search(r"^kmsd_watch_held_polls (\S+)$", text, re.M)
        return float(match[1]) if match else 0.0

    def gauge(self, name: str) -> float:
        with urllib.request.urlopen(self.addr + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(match[1]) if match else 0.0

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=DEADLINE_S)
        return code, self.log.read_text()


def call(addr: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    req = urllib.request.Request(
        addr + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
    )
    with urllib.request.urlopen(req, timeout=90) as resp:
        return resp.status, resp.headers, json.loads(resp.read() or b"null")


def login(addr: str, who: Identity, moto_endpoint: str) -> str:
    body = sign_login(
        Credentials(who.access_key, who.secret_key),
        region=REGION,
        sts_endpoint=moto_endpoint,
        server_id=SERVER_ID,
    )
    return str(call(addr, "POST", "/v1/auth/aws/login", body)[2]["token"])


def kmsctl(addr: str, who: Identity, moto_endpoint: str, *args: str, **kw: Any) -> Any:
    env = {
        **os.environ,
        "KMSD_ADDR": addr,
        "KMSD_SERVER_ID": SERVER_ID,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": who.access_key,
        "AWS_SECRET_ACCESS_KEY": who.secret_key,
        "AWS_DEFAULT_REGION": REGION,
        # Never share a token cache with the developer running the tests.
        "XDG_CACHE_HOME": str(CACHE_DIR),
    }
    return subprocess.Popen(
        [str(BIN / "kmsctl"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def run_kmsctl(*args: Any) -> str:
    proc = kmsctl(*args)
    out, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, err
    return str(out)


# -- kmsagent ---------------------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket: how a shell script (curl --unix-socket) talks to kmsagent."""

    def __init__(self, socket_path: str, timeout: float = 10) -> None:
        super().__init__("kmsagent", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


class AgentProcess:
    """``kmsagent run`` as a subprocess, logging to a file, serving on a Unix socket."""

    def __init__(
        self,
        *,
        kmsd_addr: str,
        moto_endpoint: str,
        paths: list[str],
        workdir: Path,
        args: list[str],
        env: dict[str, str] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.socket = str(workdir / "agent.sock")
        self.log = workdir / "kmsagent.log"
        base = {
            k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KMSD_", "KMSAGENT_"))
        }
        self.env = {
            **base,
            "AWS_ENDPOINT_URL": moto_endpoint,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            **(env or {}),
        }
        self.argv = [
            str(BIN / "kmsagent"),
            "run",
            *(a for p in paths for a in ("--path", p)),
            "--kmsd-addr",
            kmsd_addr,
            "--server-id",
            SERVER_ID,
            "--socket",
            self.socket,
            *args,
        ]
        self.start()

    def start(self) -> None:
        with self.log.open("a") as sink:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=sink
            )

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        assert self.proc.poll() is None, (self.proc.returncode, self.log.read_text())
        conn = UnixHTTPConnection(self.socket)
        try:
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
            body = json.loads(raw) if raw and "json" in resp.getheader("Content-Type", "") else raw
            return Answer(resp.status, dict(resp.getheaders()), body)
        finally:
            conn.close()

    def status(self) -> Any:
        """``/v1/status``, or {} while the agent is still starting."""
        try:
            return self.get("/v1/status").body
        except OSError:
            return {}

    def ready(self) -> bool:
        try:
            return self.get("/healthz").status == 200
        except OSError:
            return False

    def wait_ready(self) -> AgentProcess:
        wait_until(self.ready, f"kmsagent to sync ({self.log})")
        return self

    def value(self, name: str, **query: str) -> Any:
        answer = self.get(f"/v1/secrets/{name}?" + urllib.parse.urlencode(query))
        assert answer.status == 200, answer.body
        return answer.body["value"]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=DEADLINE_S)
        return self.log.read_text()


class IMDSv2(ThreadingHTTPServer):
    """A local stand-in for EC2's instance metadata service, IMDSv2 only (a token first)."""

    def __init__(self, instance_id: str, role: str, credentials: dict[str, str]) -> None:
        self.instance_id = instance_id
        self.role = role
        self.credentials = credentials
        self.tokens: set[str] = set()
        self.tokenless: list[str] = []  # IMDSv1-style requests: there should be none
        self.served: list[str] = []
        super().__init__(("127.0.0.1", 0), _IMDSHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _IMDSHandler(BaseHTTPRequestHandler):
    server: IMDSv2

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads what was served from the server's lists."""

    def _send(self, status: int, body: str, content_type: str = "text/plain") -> None:
        raw = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_PUT(self) -> None:
        if self.path != "/latest/api/token" or not self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        ):
            self._send(400, "bad token request")
            return
        token = uuid.uuid4().hex
        self.server.tokens.add(token)
        self._send(200, token)

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") not in self.server.tokens:
            self.server.tokenless.append(self.path)
            self._send(401, "IMDSv2: a session token is required")
            return
        self.server.served.append(self.path)
        base = "/latest/meta-data/iam/security-credentials/"
        if self.path == "/latest/meta-data/instance-id":
            self._send(200, self.server.instance_id)
        elif self.path == base:
            self._send(200, self.server.role)
        elif self.path == base + self.server.role:
            self._send(200, json.dumps(self.server.credentials), "application/json")
        else:
            self._send(404, "not found")


class Switch:
    """A TCP relay to an upstream that the test can cut (``down``) and restore (``up``).

    Cutting closes the listener and every relayed connection, as a network failure would; the
    port stays the same, so the client's configuration is untouched.
    """

    def __init__(self, upstream: str) -> None:
        host, port = urllib.parse.urlsplit(upstream).netloc.split(":")
        self.upstream = (host, int(port))
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed: down()
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class Ops:
    """An operator at a terminal: kmsctl against one kmsd."""

    def __init__(self, kmsd: Replica, admin: Identity, moto_endpoint: str) -> None:
        self.kmsd, self.admin, self.moto = kmsd, admin, moto_endpoint

    def __call__(self, *args: str) -> str:
        return run_kmsctl(self.kmsd.addr, self.admin, self.moto, *args)

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--output", "json"))

    def put(self, path: str, name: str, value: dict[str, Any]) -> str:
        doc = self.json("secret", "put", path, name, "--json", json.dumps(value))
        return str(doc["version_id"])


def credentials_file(path: Path, who: Identity, mode: int) -> None:
    """An SSM-agent style credentials file, replaced whole (write + rename) like a rotation."""
    tmp = path.with_suffix(".new")
    tmp.write_text(
        f"[default]\naws_access_key_id = {who.access_key}\n"
        f"aws_secret_access_key = {who.secret_key}\n"
    )
    tmp.chmod(mode)
    tmp.replace(path)
