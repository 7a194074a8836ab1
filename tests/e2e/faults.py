"""Fault injection for end-to-end tests: real sockets, real PostgreSQL backends, no mocks.

- ``Relay``: a loopback TCP relay in front of an upstream (moto, or PostgreSQL's TCP port or
  Unix socket) whose behaviour the test switches at run time: ``pass``, ``drop_answers`` (the
  request reaches the upstream, its answer is lost and the client connection reset: "SM's
  answer lost"), ``blackhole`` (accepted and read, never forwarded nor answered: "SM hanging")
  and ``down`` (connections refused, the open ones closed). The mode is read for every chunk the
  client sends, so it applies to requests on kept-alive connections too (botocore reuses them).
- ``Postgres``: the test's own connection to the database kmsd uses: rows, backends by
  ``application_name``, ``pg_terminate_backend``, freezing a backend process with SIGSTOP.
- small helpers the fault tests share: HTTP calls that return error answers instead of raising,
  SM labels compared with PostgreSQL's stages, a webhook receiver, host agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import asyncpg

from tests.conftest import Identity
from tests.e2e.harness import AgentProcess, Answer, Ops, Replica, credentials_file

Mode = Literal["pass", "drop_answers", "blackhole", "down"]
MODES: tuple[Mode, ...] = ("pass", "drop_answers", "blackhole", "down")
_AMZ_TARGET = re.compile(rb"^X-Amz-Target:\s*([\w.]+)", re.I | re.M)


def amz_target(chunk: bytes) -> str | None:
    """The AWS JSON-protocol operation named in a request chunk (``secretsmanager.X``)."""
    match = _AMZ_TARGET.search(chunk)
    return match[1].decode() if match else None


class _Link:
    """One relayed connection: the client's socket, the upstream's, and what the relay decided."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.drop = False  # the request in flight went out in drop_answers mode
        self.black = False  # something was swallowed: nothing more is forwarded either way


class Relay:
    """A loopback TCP relay to ``upstream_host:upstream_port`` whose mode can be switched.

    ``upstream_port=None`` makes ``upstream_host`` the path of a Unix socket (PostgreSQL's).
    ``on_request(chunk)`` is called with every chunk a client sends, before the relay decides
    what to do with it (a hook may switch this relay's or another relay's mode);
    ``on_answer(chunk)`` likewise with every chunk the upstream sends back.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int | None = None,
        *,
        on_request: Callable[[bytes], None] | None = None,
        on_answer: Callable[[bytes], None] | None = None,
        mode: Mode = "pass",
    ) -> None:
        self.upstream = upstream_host if upstream_port is None else (upstream_host, upstream_port)
        self.on_request = on_request
        self.on_answer = on_answer
        self._lock = threading.Lock()
        self._mode: Mode = "pass"
        self._links: list[_Link] = []
        self._listener: socket.socket | None = None
        # What happened, for assertions: (mode, operation) of each request that named one.
        self.requests: list[tuple[Mode, str]] = []
        self.forwarded = 0  # client chunks sent upstream
        self.dropped = 0  # upstream answers thrown away (drop_answers)
        self.swallowed = 0  # client chunks never forwarded (blackhole)
        self.hook_errors: list[BaseException] = []
        self.port = 0
        self._listen()
        self.set_mode(mode)

    @classmethod
    def to_url(cls, url: str, **kw: Any) -> Relay:
        """A relay to an ``http://host:port`` endpoint (moto)."""
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname, url
        assert parts.port, url
        return cls(parts.hostname, parts.port, **kw)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        assert mode in MODES, mode
        with self._lock:
            old, self._mode = self._mode, mode
        if mode == "down":
            self._close_listener()
            self.cut()
        elif old == "down" or self._listener is None:
            self._listen()

    def cut(self) -> None:
        """Close every open relayed connection (a network failure); new ones are still taken."""
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            self._abort(link)

    def close(self) -> None:
        self.set_mode("down")

    def ops(self, mode: Mode | None = None) -> list[str]:
        """Operations seen (optionally only those seen in ``mode``), in order."""
        with self._lock:
            return [op for m, op in self.requests if mode is None or m == mode]

    # -- internals ---------------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _close_listener(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            listener.close()

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self.upstream, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.upstream)
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection(self.upstream, timeout=10)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: down
            try:
                upstream = self._connect_upstream()
                upstream.settimeout(None)
            except OSError:
                self._reset(client)
                continue
            link = _Link(client, upstream)
            with self._lock:
                if self._mode == "down":
                    self._abort(link)
                    continue
                self._links.append(link)
            threading.Thread(target=self._from_client, args=(link,), daemon=True).start()
            threading.Thread(target=self._from_upstream, args=(link,), daemon=True).start()

    def _from_client(self, link: _Link) -> None:
        with contextlib.suppress(OSError):
            while data := link.client.recv(65536):
                self._hook(self.on_request, data)
                with self._lock:
                    mode = self._mode
                    if (op := amz_target(data)) is not None:
                        self.requests.append((mode, op))
                if mode == "down":
                    break
                if link.black or mode == "blackhole":
                    link.black = True  # the request is never forwarded, nor anything after it
                    self.swallowed += 1
                    continue
                link.drop = mode == "drop_answers"
                link.upstream.sendall(data)
                self.forwarded += 1
        if link.black:
            self._abort(link)
        else:
            with contextlib.suppress(OSError):
                link.upstream.shutdown(socket.SHUT_WR)

    def _from_upstream(self, link: _Link) -> None:
        with contextlib.suppress(OSError):
            while data := link.upstream.recv(65536):
                if link.black:
                    continue
                self._hook(self.on_answer, data)
                if link.drop:
                    # The upstream has answered, so it has done the work: lose the answer.
                    self.dropped += 1
                    self._abort(link)
                    return
                link.client.sendall(data)
        with contextlib.suppress(OSError):
            link.client.shutdown(socket.SHUT_WR)

    def _hook(self, hook: Callable[[bytes], None] | None, data: bytes) -> None:
        if hook is None:
            return
        try:
            hook(data)
        except Exception as exc:  # kept for the test to assert on, not lost
            self.hook_errors.append(exc)

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        """Close with a TCP RST (SO_LINGER 0), as a dropped connection looks to the client."""
        with contextlib.suppress(OSError):
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def _abort(self, link: _Link) -> None:
        self._reset(link.client)
        with contextlib.suppress(OSError):
            link.upstream.shutdown(socket.SHUT_RDWR)
        link.upstream.close()


# -- PostgreSQL --------------------------------------------------------------------------------


def pg_upstream(dsn: str) -> tuple[str, int | None]:
    """Where a DSN's server listens: (Unix socket path, None) or (host, port)."""
    parts = urllib.parse.urlsplit(dsn)
    query = urllib.parse.parse_qs(parts.query)
    port = parts.port or int(query.get("port", ["5432"])[0])
    host = query.get("host", [parts.hostname or ""])[0]
    if not host or host.startswith("/"):
        # libpq's default socket folder when none is named
        return f"{host or '/var/run/postgresql'}/.s.PGSQL.{port}", None
    return host, port


def pg_relay(dsn: str, **kw: Any) -> Relay:
    """A TCP relay to the PostgreSQL server of ``dsn`` (its Unix socket or TCP port)."""
    host, port = pg_upstream(dsn)
    return Relay(host, port, **kw)


def dsn_through(dsn: str, relay: Relay) -> str:
    """``dsn`` (same user, password and database) reaching the server through ``relay``."""
    parts = urllib.parse.urlsplit(dsn)
    user = parts.username or "postgres"
    password = f":{parts.password}" if parts.password else ""
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k not in ("host", "port")]
    return urllib.parse.urlunsplit(
        parts._replace(
            netloc=f"{user}{password}@127.0.0.1:{relay.port}",
            query=urllib.parse.urlencode(query),
        )
    )


class Postgres:
    """The test's own connection to kmsd's database (on a private event loop, thread-safe)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._conn: asyncpg.Connection = self._run(asyncpg.connect(dsn))
        self.frozen: set[int] = set()

    def _run(self, coro: Any) -> Any:
        with self._lock:
            return self._loop.run_until_complete(coro)

    def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in self._run(self._conn.fetch(sql, *args))]

    def fetchval(self, sql: str, *args: Any) -> Any:
        return self._run(self._conn.fetchval(sql, *args))

    def backends(self, application_name: str) -> list[int]:
        """Pids of this database's backends with exactly that ``application_name``."""
        rows = self.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = $1 AND pid <> pg_backend_pid() ORDER BY backend_start",
            application_name,
        )
        return [int(r["pid"]) for r in rows]

    def application_names(self) -> list[str]:
        """Every application_name connected to this database (for failure messages)."""
        rows = self.fetch(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() ORDER BY 1"
        )
        return [str(r["application_name"]) for r in rows]

    def backend(self, application_name: str) -> int:
        """The one backend with that name (fails, naming those there are, if not exactly one)."""
        pids = self.backends(application_name)
        assert len(pids) == 1, (application_name, pids, self.application_names())
        return pids[0]

    def terminate(self, pid: int) -> bool:
        return bool(self.fetchval("SELECT pg_terminate_backend($1)", pid))

    def outbox(self) -> list[dict[str, Any]]:
        return self.fetch("SELECT id, op, sm_name, version_id, attempts, last_error FROM sm_outbox")

    def freeze(self, pid: int) -> None:
        """SIGSTOP a backend process (the embedded server runs on this machine)."""
        self.frozen.add(pid)
        os.kill(pid, signal.SIGSTOP)

    def thaw(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        self.frozen.discard(pid)

    @contextlib.contextmanager
    def frozen_backend(self, pid: int) -> Iterator[int]:
        self.freeze(pid)
        try:
            yield pid
        finally:
            self.thaw(pid)

    @contextlib.contextmanager
    def refusing_connections(self) -> Iterator[None]:
        """While in the block, the database takes no new connection (open ones carry on).

        A client that notices a hung connection may reconnect at once; refusing new
        connections keeps its path down until the block ends. Set from the server's
        maintenance database (a database cannot refuse connections while one is on it).
        """
        name = self.fetchval("SELECT current_database()")
        parts = urllib.parse.urlsplit(self.dsn)
        maintenance = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
        ident = '"' + str(name).replace('"', '""') + '"'

        async def allow(value: bool) -> None:
            conn = await asyncpg.connect(maintenance)
            try:
                await conn.execute(f"ALTER DATABASE {ident} ALLOW_CONNECTIONS {value}")
            finally:
                await conn.close()

        self._run(allow(False))
        try:
            yield
        finally:
            self._run(allow(True))

    def close(self) -> None:
        for pid in list(self.frozen):
            self.thaw(pid)  # never leave a stopped backend behind
        with contextlib.suppress(Exception):
            self._run(self._conn.close())
        self._loop.close()


# -- HTTP, SM and PostgreSQL state --------------------------------------------------------------


def request(
    addr: str,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    timeout: float = 60,
) -> Answer:
    """An HTTP call that returns 4xx/5xx answers (status, headers, parsed body) too."""
    req = urllib.request.Request(
        addr + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, status, headers = resp.read(), resp.status, resp.headers
    except urllib.error.HTTPError as err:
        raw, status, headers = err.read(), err.code, err.headers
    text = raw.decode(errors="replace")
    try:
        parsed: Any = json.loads(text) if text else None
    except ValueError:
        parsed = text
    return Answer(status, dict(headers.items()), parsed)


def put_json(
    addr: str, token: str, path: str, name: str, value: dict[str, Any], timeout: float = 60
) -> Answer:
    return request(addr, "PUT", f"/v1/secrets/{path}/{name}", {"value": value}, token, timeout)


def health(replica: Replica) -> int | None:
    """``/healthz`` status of a replica (None if it does not answer)."""
    assert replica.proc.poll() is None, (replica.proc.returncode, replica.log.read_text())
    try:
        with urllib.request.urlopen(replica.addr + "/healthz", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return None


def stages(ops: Ops, path: str, name: str) -> dict[str, str]:
    """PostgreSQL's view (GET /v1/secrets): version id -> stage."""
    doc = ops.json("secret", "show", path, name)
    return {v["version_id"]: v["stage"] for v in doc["versions"]}


def secret_doc(addr: str, token: str, path: str, name: str) -> Any:
    answer = request(addr, "GET", f"/v1/secrets/{path}/{name}", token=token)
    assert answer.status == 200, answer
    return answer.body


def pg_stages(addr: str, token: str, path: str, name: str) -> dict[str, str]:
    doc = secret_doc(addr, token, path, name)
    return {v["version_id"]: v["stage"] for v in doc["versions"]}


def sm_labels(sm_client: Any, secret_id: str) -> dict[str, list[str]]:
    """SM's view, straight from moto: version id -> labels (versions without labels too)."""
    desc = sm_client.describe_secret(SecretId=secret_id)
    return {k: list(v) for k, v in desc.get("VersionIdsToStages", {}).items()}


def holders(labels: dict[str, list[str]], label: str) -> list[str]:
    return sorted(v for v, ls in labels.items() if label in ls)


STAGE_LABELS = {"current": "AWSCURRENT", "previous": "AWSPREVIOUS", "pending": "AWSPENDING"}


def disagreements(pg: dict[str, str], labels: dict[str, list[str]]) -> list[str]:
    """Where SM's labels do not mirror PostgreSQL's stages (empty: they agree)."""
    problems = []
    for stage, label in STAGE_LABELS.items():
        want = sorted(v for v, s in pg.items() if s == stage)
        got = holders(labels, label)
        if want != got:
            problems.append(f"{stage}: PostgreSQL {want}, SM {label} on {got}")
    return problems


def sm_value(sm_client: Any, secret_id: str, version_id: str) -> Any:
    """A version's value straight from moto (by version id: moto's default read is stale)."""
    got = sm_client.get_secret_value(SecretId=secret_id, VersionId=version_id)
    return json.loads(got["SecretString"])


def unique_app(prefix: str = "prod/shop") -> str:
    """An application path no other test uses (moto, and so SM's names, live per session)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def holds(check: Callable[[], bool], for_s: float, what: str) -> None:
    """Assert that ``check`` stays true for ``for_s`` seconds (checked continuously)."""
    end = time.monotonic() + for_s
    while time.monotonic() < end:
        assert check(), f"{what}: stopped holding"
        time.sleep(0.02)


def wait_for(check: Callable[[], bool], what: str, within_s: float) -> float:
    """Poll ``check`` until true; fail after ``within_s``. Returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < within_s:
        if check():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {within_s} s")


# -- webhooks and agents ------------------------------------------------------------------------


class Deliveries(ThreadingHTTPServer):
    """A webhook receiver: every delivery (X-Kmsd-Delivery id, parsed body) in arrival order."""

    def __init__(self, answer_after_s: float = 0.0) -> None:
        self.got: list[tuple[str | None, dict[str, Any]]] = []
        self.answer_after_s = answer_after_s  # a slow receiver keeps a delivery in flight
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _DeliveryHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def add(self, delivery: str | None, body: dict[str, Any]) -> None:
        with self._lock:
            self.got.append((delivery, body))

    def snapshot(self) -> list[tuple[str | None, dict[str, Any]]]:
        with self._lock:
            return list(self.got)

    def actions(self) -> list[str]:
        return [str(b.get("action")) for _, b in self.snapshot()]

    def duplicates(self) -> list[str | None]:
        ids = [d for d, _ in self.snapshot()]
        return sorted({d for d in ids if ids.count(d) > 1}, key=str)

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _DeliveryHandler(BaseHTTPRequestHandler):
    server: Deliveries

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {"unparsed": body.decode(errors="replace")}
        self.server.add(self.headers.get("X-Kmsd-Delivery"), doc)
        if self.server.answer_after_s:
            time.sleep(self.server.answer_after_s)  # the receiver at work, not a test wait
        self.send_response(204)
        self.end_headers()


def host_agent(
    host: Identity,
    kmsd: Replica,
    moto_endpoint: str,
    workdir: Path,
    path: str,
    instance_id: str,
) -> AgentProcess:
    """A kmsagent on a VM whose credentials file holds ``host`` (bound to ``path``'s app)."""
    workdir.mkdir(parents=True, exist_ok=True)
    creds = workdir / "credentials"
    credentials_file(creds, host, 0o600)
    return AgentProcess(
        kmsd_addr=kmsd.addr,
        moto_endpoint=moto_endpoint,
        paths=[path],
        workdir=workdir,
        args=[
            *("--credentials", "file", "--credentials-file", str(creds)),
            *("--instance-id", instance_id),
        ],
    )
