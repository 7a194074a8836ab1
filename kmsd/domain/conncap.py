"""Connection admission (pure): how many client connections a replica keeps, and which go.

Theory of operation. A replica's file descriptors are shared by its client connections and by
what kmsd needs for itself: the database pool, the AWS clients, its log, the listener.
``connection_cap`` gives clients what the descriptor limit leaves after a reserve for the rest
(``fd_reserve``); at the cap the accept loop stops accepting and the kernel's backlog holds new
connects, so ``accept()`` never runs into the limit in the first place.

Slots are not all equally deserved. A connection is *waiting on the client* when kmsd has
nothing to do for it until the client acts: just accepted, between two requests (kept alive),
in a request whose body is still arriving, or with an answer the client is not reading. It is
*working* while kmsd holds a complete request (a held poll, an AWS write). Closing a waiting
connection loses no work, and it is all a hostile client can make without credentials: so at
the cap the oldest waiting connection is shed to make room, first those that never delivered a
complete request (*unproven*), then kept-alive ones; accepting pauses only while every slot is
working, or while shed connections are still closing (their descriptors are not free yet).

Per source address, at most ``max_pending_per_ip`` unproven connections wait for their first
complete request under the full header and body timeouts. One more is *on probation*: it has
``PROBATION_S`` to deliver a complete request, or it is closed. Refusing it outright at accept
would refuse honest clients too: one that opens many connections at once (an agent starting
its polls, a NAT gateway's hosts after a restart) has them all accepted before the first
request is read, and measured, 436 of 500 such parallel connections were refused. Addresses of
trusted proxies are exempt: every client behind a load balancer shares its address, and the
proxy buffers slow clients itself.

The ledger knows connections only as opaque keys (the I/O layer's objects) and is told what
happened to each; it never touches a socket.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

# Descriptors kmsd keeps for itself beyond the connections named below: stdin/out/err and the
# log, the event loop's epoll and self-pipe, the listening sockets, what the runtime opens
# (modules, CA bundles, /dev/urandom, DNS lookups) and webhook deliveries, with room to spare.
BASE_FDS = 64
# PostgreSQL: the pool (KMSD_DB_POOL_MAX) plus the dedicated LISTEN connection.
LISTEN_CONNECTIONS = 1
# The SM and KMS clients, each with botocore's default pool of 10 connections.
AWS_CLIENT_FDS = 2 * 10
# The aiohttp session that forwards sign-ins to STS: its connector's default limit is 100.
STS_SESSION_FDS = 100
# A connection over its address's limit of unproven ones must deliver a complete request
# within this long: a client that opens connections in parallel sends each request right away,
# and a second covers a slow link's round trips and a busy event loop.
PROBATION_S = 1.0
# However low the descriptor limit, a replica keeps this many client slots; below it the
# accept loop's EMFILE handling takes over (and the start-up log says the limit is too low).
MIN_CONNECTIONS = 16


# A request body must be complete within KMSD_BODY_TIMEOUT of its headers, plus one second
# for every this many bytes received: a large body (a watch report may be 12 MiB) sent at
# 512 kbit/s or faster is never cut, one trickled a byte at a time is cut at the timeout.
BODY_RATE_FLOOR = 64 * 1024


def body_allowance(timeout_s: float, received: int) -> float:
    """Return the seconds a body may take, given the bytes of it received so far."""
    return timeout_s + received / BODY_RATE_FLOOR


def fd_reserve(db_pool_max: int) -> int:
    """Return the descriptors kept back from clients for kmsd's own use."""
    return BASE_FDS + db_pool_max + LISTEN_CONNECTIONS + AWS_CLIENT_FDS + STS_SESSION_FDS


@dataclass(frozen=True, slots=True)
class Cap:
    """The client-connection cap and what it was derived from, for the start-up log."""

    connections: int
    fd_limit: int
    reserve: int
    overridden: bool  # KMSD_MAX_CONNECTIONS was set

    @property
    def within_fd_limit(self) -> bool:
        """False: a full replica would run out of descriptors (accept() then fails: EMFILE)."""
        return self.connections + self.reserve <= self.fd_limit


def connection_cap(fd_limit: int, db_pool_max: int, override: int | None = None) -> Cap:
    """Return the cap on open client connections for a descriptor limit (RLIMIT_NOFILE)."""
    reserve = fd_reserve(db_pool_max)
    if override is not None:
        return Cap(override, fd_limit, reserve, overridden=True)
    return Cap(max(fd_limit - reserve, MIN_CONNECTIONS), fd_limit, reserve, overridden=False)


class Phase(enum.Enum):
    NEW = "new"  # accepted; no request dispatched yet (waiting on the client)
    READING = "reading"  # a request dispatched, its body still arriving (waiting)
    WORKING = "working"  # kmsd holds the whole request and is handling it
    IDLE = "idle"  # answered: kept alive, lingering over an unread body, or being read (waiting)
    CLOSING = "closing"  # shed: its close is under way, its descriptor not yet free


class Event(enum.Enum):
    DISPATCH = "dispatch"  # the request's headers are in and its handler starts
    BODY_DONE = "body_done"  # the request's body is complete (at once when it has none)
    ANSWERED = "answered"  # the handler produced its answer
    SHED = "shed"  # the ledger chose it to make room


# Rules, one row per legal transition (a close ends a connection from any phase):
# - a request is dispatched only on a connection waiting for one (NEW, IDLE);
# - its body completes while it is read (READING -> WORKING), or after the handler answered
#   without reading it all (IDLE, aiohttp lingering): either way the connection is *proven*;
# - the answer comes after the body (WORKING) or before it was all read (READING);
# - only a waiting connection is shed, and a closing one sees nothing but its close.
# Any other (phase, event) pair is a bug in the caller and raises IllegalTransition.
TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (Phase.NEW, Event.DISPATCH): Phase.READING,
    (Phase.IDLE, Event.DISPATCH): Phase.READING,
    (Phase.READING, Event.BODY_DONE): Phase.WORKING,
    (Phase.IDLE, Event.BODY_DONE): Phase.IDLE,
    (Phase.READING, Event.ANSWERED): Phase.IDLE,
    (Phase.WORKING, Event.ANSWERED): Phase.IDLE,
    (Phase.NEW, Event.SHED): Phase.CLOSING,
    (Phase.READING, Event.SHED): Phase.CLOSING,
    (Phase.IDLE, Event.SHED): Phase.CLOSING,
}
WAITING = frozenset({Phase.NEW, Phase.READING, Phase.IDLE})


class IllegalTransition(ValueError):
    """An event that cannot happen to a connection in its phase."""


class Step(enum.Enum):
    ACCEPT = "accept"  # a slot is free
    SHED = "shed"  # close the connection named with it, then ask again
    PAUSE = "pause"  # wait for a connection to close or to start waiting


@dataclass(slots=True)
class _Conn:
    ip: str
    phase: Phase = Phase.NEW
    proven: bool = False


class Ledger(Generic[K]):
    """Every open client connection of one replica: its phase, its address, the shedding order.

    ``admit`` right after accept(), ``apply`` for each event, ``closed`` once its descriptor is
    free; ``next_step`` before the next accept() says whether there is room.
    """

    def __init__(self, cap: int, max_pending_per_ip: int) -> None:
        if cap < 1 or max_pending_per_ip < 1:
            raise ValueError("a ledger needs a cap and a per-address limit of at least 1")
        self.cap = cap
        self.max_pending_per_ip = max_pending_per_ip
        self._conns: dict[K, _Conn] = {}
        # Waiting connections in the order they started waiting (dicts keep insertion order):
        # the first of each is the one shed first.
        self._unproven: dict[K, None] = {}
        self._proven: dict[K, None] = {}
        self._pending_by_ip: dict[str, int] = {}
        self._closing = 0

    @property
    def open(self) -> int:
        """Connections counted against the cap (closing ones included)."""
        return len(self._conns)

    @property
    def closing(self) -> int:
        """Connections shed whose descriptors are not free yet."""
        return self._closing

    @property
    def waiting(self) -> int:
        return len(self._unproven) + len(self._proven)

    def pending(self, ip: str) -> int:
        """Unproven connections open from ``ip``."""
        return self._pending_by_ip.get(ip, 0)

    def phase(self, key: K) -> Phase | None:
        conn = self._conns.get(key)
        return conn.phase if conn else None

    def next_step(self) -> tuple[Step, K | None]:
        """Say what the accept loop does next: accept, shed the named connection, or pause."""
        if len(self._conns) < self.cap:
            return Step.ACCEPT, None
        if self._closing:
            return Step.PAUSE, None  # the slot a shed connection frees is not free yet
        victim = self.shed_one()
        return (Step.PAUSE, None) if victim is None else (Step.SHED, victim)

    def shed_one(self) -> K | None:
        """Choose the connection to close for room (marked CLOSING), or None if none waits."""
        for queue in (self._unproven, self._proven):
            if queue:
                victim = next(iter(queue))
                self.apply(victim, Event.SHED)
                return victim
        return None

    def admit(self, key: K, ip: str, *, exempt: bool = False) -> bool:
        """Track a connection just accepted from ``ip``; False: it is on probation (over the
        address's limit): close it unless it is proven within PROBATION_S."""
        if key in self._conns:
            raise IllegalTransition("connection admitted twice")
        within = exempt or self.pending(ip) < self.max_pending_per_ip
        self._conns[key] = _Conn(ip)
        self._pending_by_ip[ip] = self.pending(ip) + 1
        self._unproven[key] = None
        return within

    def proven(self, key: K) -> bool:
        """Whether the connection has delivered a complete request (False once it is gone)."""
        conn = self._conns.get(key)
        return conn is not None and conn.proven

    def apply(self, key: K, event: Event) -> Phase:
        """Apply ``event`` to a tracked connection and return its new phase."""
        conn = self._conns.get(key)
        if conn is None:
            raise IllegalTransition(f"{event.value} on a connection the ledger does not hold")
        after = TRANSITIONS.get((conn.phase, event))
        if after is None:
            raise IllegalTransition(f"{event.value} cannot happen to a {conn.phase.value} one")
        if event is Event.BODY_DONE and not conn.proven:
            conn.proven = True
            self._unpend(conn.ip)
        self._unqueue(key)
        if after is Phase.CLOSING:
            self._closing += 1
        elif after in WAITING:
            (self._proven if conn.proven else self._unproven)[key] = None
        conn.phase = after
        return after

    def closed(self, key: K) -> None:
        """Forget a connection whose descriptor is free (unknown keys are ignored)."""
        conn = self._conns.pop(key, None)
        if conn is None:
            return
        self._unqueue(key)
        if conn.phase is Phase.CLOSING:
            self._closing -= 1
        if not conn.proven:
            self._unpend(conn.ip)

    def _unqueue(self, key: K) -> None:
        self._unproven.pop(key, None)
        self._proven.pop(key, None)

    def _unpend(self, ip: str) -> None:
        left = self._pending_by_ip[ip] - 1
        if left:
            self._pending_by_ip[ip] = left
        else:
            del self._pending_by_ip[ip]  # the map holds only addresses with open connections
