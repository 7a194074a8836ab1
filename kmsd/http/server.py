"""The listening side of ``kmsd serve``: kmsd's own accept loop in front of aiohttp.

Why not aiohttp's ``TCPSite``: asyncio's server accepts whatever arrives, with no public way to
pause it at a cap. And at the descriptor limit, Python 3.11's selector loop
(``BaseSelectorEventLoop._accept_connection``) reports EMFILE to the loop's exception handler,
removes its reader and schedules a retry in one second (``ACCEPT_RETRY_DELAY``), but does not
leave its ``for _ in range(backlog)`` loop: it calls accept() again, up to ``backlog`` (4096
here) times in the same tick, reporting each failure with its traceback and scheduling one
retry per failure. Measured against a real ``kmsd serve`` at 256 descriptors: 2.4 million log
lines in five seconds, and ``/healthz`` timing out.

``GuardedSite`` listens itself and accepts with public asyncio calls (``sock_accept``, then
``connect_accepted_socket`` with aiohttp's protocol, ``kmsd.http.conn.GuardedHandler``). Before
every accept() it asks the ledger (``kmsd.domain.conncap``):

- room: accept; a connection from an address already holding its limit of unproven ones is
  on probation (closed unless it delivers a complete request within a second);
- full: shed the oldest connection waiting on its client, and wait until its descriptor is free;
- full of work: stop accepting (the kernel's backlog holds new connects) until a connection
  closes or starts waiting on its client again.

If accept() fails with EMFILE/ENFILE anyway (something else used up the reserve), one waiting
connection is shed, or the loop waits for a close or ``ACCEPT_RETRY_S``, whichever comes first;
the failure is logged once per ``THROTTLE_INTERVAL_S`` with the count of repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import resource
import socket
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from kmsd.config import Settings
from kmsd.domain.conncap import Cap, Ledger, Step, connection_cap
from kmsd.http.conn import LOGGER, Conn, ConnGuard, GuardedHandler
from kmsd.logs import exception_fields
from kmsd.tasks import supervise

# accept() failures that mean "no descriptor or buffer for now", as asyncio itself treats them.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept() failures that concern only the connection being accepted: it went away, or Linux
# passed on a network error already pending on it (accept(2): retry as for EAGAIN).
CONNECTION_GONE = frozenset(
    {
        errno.ECONNABORTED,
        errno.EPROTO,
        errno.EPERM,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENOPROTOOPT,
        errno.EOPNOTSUPP,
    }
)
# asyncio's own pause after EMFILE: long enough for closes to free descriptors, short enough
# that a replica recovers within a health check's interval.
ACCEPT_RETRY_S = 1.0
# Like asyncio's accept loop, take what the backlog holds in one go, but let the connections
# accepted so far run after this many.
ACCEPT_BATCH = 128
# Linux's default ceiling on descriptors (fs.nr_open): the limit kmsd assumes when unlimited.
UNLIMITED_FDS = 1024 * 1024


def fd_limit() -> int:
    """This process's soft limit on open descriptors (RLIMIT_NOFILE)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED_FDS if soft == resource.RLIM_INFINITY else soft


def guard_for(settings: Settings, limit: int | None = None) -> tuple[ConnGuard, Cap]:
    """The connection guard ``settings`` ask for, and the cap it was given."""
    cap = connection_cap(
        fd_limit() if limit is None else limit, settings.db_pool_max, settings.max_connections
    )
    guard = ConnGuard(
        Ledger(cap.connections, settings.max_pending_per_ip),
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        exempt=settings.trusted_proxies,
    )
    return guard, cap


def listen(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Bind and listen on every address ``host`` names, as asyncio's create_server does."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class GuardedSite(web.BaseSite):
    """A TCP site whose accept loop is kmsd's: a cap, shedding, and back-off at the limit."""

    __slots__ = ("_guard", "_host", "_listeners", "_loops", "_port", "_setups")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, guard: ConnGuard, *, backlog: int
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._guard = host, port, guard
        self._listeners: list[socket.socket] = []
        self._loops: set[asyncio.Task[None]] = set()
        self._setups: set[asyncio.Task[None]] = set()  # connections being set up

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        _report_dispatch(server)
        self._listeners = listen(self._host, self._port, self._backlog)
        for sock in self._listeners:
            # Supervised: a replica whose accept loop died would still hold its port.
            run = functools.partial(self._accept_loop, server, sock)
            self._loops.add(asyncio.create_task(supervise("accept", run), name="kmsd-accept"))

    async def stop(self) -> None:
        tasks = self._loops | self._setups
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loops.clear()
        for sock in self._listeners:
            sock.close()
        await super().stop()

    async def _accept_loop(self, server: web.Server, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        accepted = 0
        while True:
            await self._room()
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:
                await self._accept_failed(exc)
                continue
            conn = self._guard.admit(peer)
            task = asyncio.create_task(self._connect(server, sock, conn))
            self._setups.add(task)
            task.add_done_callback(self._setups.discard)
            accepted += 1
            if accepted % ACCEPT_BATCH == 0:
                await asyncio.sleep(0)  # a yield, not a wait: let the new connections run

    async def _room(self) -> None:
        """Return once there is room for one more connection, shedding to make it."""
        guard = self._guard
        while True:
            step, victim = guard.ledger.next_step()
            if step is Step.ACCEPT:
                return
            if victim is not None:
                guard.shed(victim)
                continue
            guard.changed.clear()
            await guard.changed.wait()

    async def _accept_failed(self, exc: OSError) -> None:
        if exc.errno in CONNECTION_GONE:
            return
        guard = self._guard
        fields = exception_fields(exc)
        fields.pop("raised_at", None)  # always here
        guard.log.log(LOGGER, logging.WARNING, "accept_failed", **fields)
        # One shed at a time: the next only once the last one's descriptor is free.
        if exc.errno in OUT_OF_RESOURCES and not guard.ledger.closing:
            victim = guard.ledger.shed_one()
            if victim is not None:
                guard.shed(victim)
        # Wait for a descriptor to be freed (the shed one's, any other), or try again anyway.
        guard.changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ACCEPT_RETRY_S):
                await guard.changed.wait()

    async def _connect(self, server: web.Server, sock: socket.socket, conn: Conn) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: GuardedHandler(server, self._guard, conn), sock
            )
        except BaseException as exc:
            # connect_accepted_socket closes its transport on failure, not a socket it never
            # wrapped; connection_lost may have run already (closed() is idempotent).
            sock.close()
            self._guard.closed(conn)
            if not isinstance(exc, Exception):
                raise
            fields = exception_fields(exc)
            self._guard.log.log(LOGGER, logging.WARNING, "connection_setup_failed", **fields)


def _report_dispatch(server: web.Server) -> None:
    """Tell each GuardedHandler when aiohttp starts handling one of its requests.

    aiohttp has no hook for "headers parsed, handler starting" but the server's request factory
    (a public attribute of ``web.Server``, read by each protocol when it is made), which it
    calls at exactly that moment with the request's body stream.
    """
    inner = server.request_factory

    def factory(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> BaseRequest:
        if isinstance(protocol, GuardedHandler):
            protocol.request_started(payload)
        return inner(message, payload, protocol, writer, task)

    server.request_factory = factory


def limits_fields(cap: Cap, settings: Settings) -> dict[str, Any]:
    """The connection limits in effect, as fields of the start-up log line."""
    return {
        "max_connections": cap.connections,
        "fd_limit": cap.fd_limit,
        "fd_reserve": cap.reserve,
        "from": "KMSD_MAX_CONNECTIONS" if cap.overridden else "RLIMIT_NOFILE",
        "max_pending_per_ip": settings.max_pending_per_ip,
        "header_timeout_s": settings.header_timeout_s,
        "body_timeout_s": settings.body_timeout_s,
    }
