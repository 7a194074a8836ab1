"""One client connection: aiohttp's HTTP/1 protocol with clocks on the client's side of it.

aiohttp bounds nothing a client does slowly: a request line sent a byte every few seconds, or a
body slower than any honest client, keeps its connection (and a descriptor) for as long as the
client likes. ``GuardedHandler`` is aiohttp's ``RequestHandler`` with two clocks:

- the *header clock* runs while kmsd waits for a request's line and headers: from accept for a
  new connection, from the first byte of the next request on a kept-alive one (an idle
  kept-alive connection keeps aiohttp's keepalive_timeout). When it runs out the connection is
  dropped; there is no request to answer.
- the *body clock* starts when the headers are in and the handler starts, and stops when the
  body is complete. It allows KMSD_BODY_TIMEOUT plus one second per 64 KiB received so far
  (``kmsd.domain.conncap.body_allowance``): a minimum rate, with a head start. When it runs out
  the body stream fails with ``RequestTimeout``, the handler reading it answers 408
  problem+json (through the error mapping, like every KmsError), and the connection closes
  after that answer. A held poll has read its body before it is held: the hold is the handler
  awaiting, and no clock runs.

Each connection also tells the replica's ``ConnGuard`` what happens to it (dispatched, body
complete, answered, closed): the ledger in ``kmsd.domain.conncap`` decides from that which
connection to shed at the cap, and which are over their address's limit of unproven ones
(those are dropped unless they deliver a complete request within ``PROBATION_S``).

The answers aiohttp makes by itself (a request it cannot parse, an ``Expect`` it does not
support, a handler error that escaped) are text/plain; here they become problem+json like the
rest of kmsd's refusals, with a fixed detail that never echoes the request.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from kmsd.domain.access import IpAddress, IpNetwork, ip_in
from kmsd.domain.conncap import PROBATION_S, Event, Ledger, Phase, body_allowance
from kmsd.errors import (
    InvalidInput,
    KmsError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from kmsd.http.common import REQUEST_ID, problem_response
from kmsd.logs import Throttled

LOGGER = "kmsd.conn"


class RequestTimeout(KmsError):
    """The request body did not arrive within KMSD_BODY_TIMEOUT."""

    code = "request-timeout"
    title = "Request timeout"
    http_status = 408


@dataclass(eq=False, slots=True)
class Conn:
    """A connection from accept() on: the ledger's key, before and after it has a protocol."""

    ip: str
    probation: bool = False  # over its address's limit: PROBATION_S to deliver a request
    protocol: GuardedHandler | None = None
    doomed: bool = False  # shed before its protocol existed: dropped as soon as it does


class ConnGuard:
    """The replica's connection ledger and clock settings, shared by the accept loop and
    every connection; ``changed`` is set whenever a slot may have freed up."""

    def __init__(
        self,
        ledger: Ledger[Conn],
        *,
        header_timeout_s: float,
        body_timeout_s: float,
        exempt: Sequence[IpNetwork] = (),
        throttled: Throttled | None = None,
    ) -> None:
        self.ledger = ledger
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.exempt = tuple(exempt)
        self.log = throttled or Throttled()
        self.changed = asyncio.Event()

    def admit(self, peer: Any) -> Conn:
        """Track a connection just accepted from ``peer`` (on probation if over its limit)."""
        address = _address(peer)
        conn = Conn(str(address) if address is not None else "-")
        conn.probation = not self.ledger.admit(conn, conn.ip, exempt=ip_in(address, self.exempt))
        return conn

    def apply(self, conn: Conn, event: Event) -> None:
        # A connection being shed hears nothing but its close; a closed one nothing at all.
        if self.ledger.phase(conn) in (None, Phase.CLOSING):
            return
        if self.ledger.apply(conn, event) is Phase.IDLE:
            self.changed.set()  # now sheddable: a paused accept loop may go on

    def shed(self, conn: Conn) -> None:
        """Drop a connection the ledger chose to make room (it is CLOSING there already)."""
        self.log.log(LOGGER, logging.WARNING, "connection_shed")
        if conn.protocol is not None:
            conn.protocol.drop()
        else:
            conn.doomed = True

    def closed(self, conn: Conn) -> None:
        self.ledger.closed(conn)
        self.changed.set()


def _address(peer: Any) -> IpAddress | None:
    """The peer's IP address (an IPv4-mapped IPv6 one as IPv4), or None if it has none."""
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return None
    try:
        ip = ipaddress.ip_address(peer[0].partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class GuardedHandler(RequestHandler):
    """aiohttp's HTTP/1 protocol with the header and body clocks, reporting to a ConnGuard."""

    __slots__ = (
        "_body",
        "_body_clock",
        "_body_since",
        "_conn",
        "_guard",
        "_handling",
        "_header_clock",
        "_late",
        "_probation",
    )

    def __init__(self, manager: web.Server, guard: ConnGuard, conn: Conn) -> None:
        # auto_decompress off: kmsd refuses a compressed body unread (415 in json_body). With
        # it on, aiohttp decodes bodies itself and answers 400 text/plain, before any handler
        # runs, for an encoding it has no decoder for (br without Brotli, zstd without
        # backports.zstd), and fails the stream of a corrupt gzip body while lingering.
        # access_log=None (kmsd's middleware writes the access log): aiohttp takes None, as
        # AppRunner passes it, though its annotation says Logger.
        super().__init__(
            manager,
            loop=asyncio.get_running_loop(),
            access_log=None,  # type: ignore[arg-type]
            auto_decompress=False,
        )
        self._guard = guard
        self._conn = conn
        self._header_clock: asyncio.TimerHandle | None = None
        self._body_clock: asyncio.TimerHandle | None = None
        self._body_since = 0.0  # loop time the body clock started
        self._body: StreamReader | None = None  # the body of the request being handled
        self._handling = False
        self._late = False  # this request's body ran out of time
        self._probation: asyncio.TimerHandle | None = None

    # -- the connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._conn.protocol = self
        if self._conn.doomed:
            self.drop()
            return
        self._start_header_clock()
        if self._conn.probation:
            self._probation = asyncio.get_running_loop().call_later(
                PROBATION_S, self._probation_over
            )

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_clocks()
        super().connection_lost(exc)
        self._guard.closed(self._conn)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Bytes while no request is being handled and the last body is complete: the start of
        # the next request (a complete one is dispatched within this loop iteration).
        if not self._handling and (self._body is None or self._body.is_eof()):
            self._start_header_clock()

    def drop(self) -> None:
        """Close at once, discarding anything not yet sent (the client is not reading it)."""
        transport = self.transport
        self.force_close()
        if transport is not None:
            transport.abort()

    # -- one request ------------------------------------------------------------------------

    def request_started(self, body: StreamReader) -> None:
        """Its headers are in and its handler starts: stop the header clock, time the body."""
        if self._header_clock is not None:
            self._header_clock.cancel()
            self._header_clock = None
        self._handling, self._body, self._late = True, body, False
        self._guard.apply(self._conn, Event.DISPATCH)
        if body.is_eof():
            self._body_done(body)
            return
        loop = asyncio.get_running_loop()
        self._body_since = loop.time()
        self._body_clock = loop.call_later(self._guard.body_timeout_s, self._body_timed_out)
        body.on_eof(functools.partial(self._body_done, body))

    async def finish_response(
        self, request: BaseRequest, resp: StreamResponse, start_time: float | None
    ) -> tuple[StreamResponse, bool]:
        # The handler has answered: from here kmsd waits on the client again (to read the
        # answer, to finish an unread body while aiohttp lingers, or for the next request).
        if self._body_clock is not None:
            self._body_clock.cancel()
            self._body_clock = None
        self._handling = False
        self._guard.apply(self._conn, Event.ANSWERED)
        if isinstance(resp, web.HTTPException) and resp.status >= 400:
            resp = _refusal(request, resp.status, resp.headers.get("Allow"))
        if self._late:
            resp.force_close()
        return await super().finish_response(request, resp, start_time)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        """aiohttp's answer to a request it could not parse or handle, as problem+json."""
        # Logged through kmsd.logs.AiohttpRecords: the exception's class, never its text.
        self.log_exception("Error handling request", exc_info=exc)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already on its way: the connection is broken")
        resp = _refusal(request, status)
        resp.force_close()
        return resp

    # -- the clocks -------------------------------------------------------------------------

    def _start_header_clock(self) -> None:
        if self._header_clock is None and self.transport is not None:
            self._header_clock = asyncio.get_running_loop().call_later(
                self._guard.header_timeout_s, self._header_timed_out
            )

    def _header_timed_out(self) -> None:
        self._header_clock = None
        if self._handling:
            return
        self._guard.log.log(LOGGER, logging.WARNING, "header_timeout")
        self.drop()

    def _probation_over(self) -> None:
        self._probation = None
        if self.transport is None or self._guard.ledger.proven(self._conn):
            return
        self._guard.log.log(LOGGER, logging.WARNING, "connection_refused", reason="pending_per_ip")
        self.drop()

    def _body_done(self, body: StreamReader) -> None:
        if body is not self._body:
            return  # the body of an earlier request, finished while aiohttp lingered
        if self._body_clock is not None:
            self._body_clock.cancel()
            self._body_clock = None
        self._guard.apply(self._conn, Event.BODY_DONE)

    def _body_timed_out(self) -> None:
        self._body_clock = None
        body = self._body
        if not self._handling or body is None or body.is_eof():
            return
        loop = asyncio.get_running_loop()
        allowed = body_allowance(self._guard.body_timeout_s, body.total_bytes)
        left = self._body_since + allowed - loop.time()
        if left > 0:  # it has earned more time by what it sent
            self._body_clock = loop.call_later(left, self._body_timed_out)
            return
        self._guard.log.log(LOGGER, logging.WARNING, "body_timeout")
        self._late = True
        self.close()  # parse nothing more from this client; close once the 408 is out
        seconds = f"{self._guard.body_timeout_s:g}"
        body.set_exception(RequestTimeout(f"the request body did not arrive within {seconds} s"))
        # At its end, so that aiohttp does not linger over the rest (reading it would raise).
        body.feed_eof()

    def _stop_clocks(self) -> None:
        for clock in (self._header_clock, self._body_clock, self._probation):
            if clock is not None:
                clock.cancel()
        self._header_clock = self._body_clock = self._probation = None


# aiohttp's own refusals, as the KmsError kmsd raises for the same status where there is one.
_ERRORS: dict[int, type[KmsError]] = {
    400: InvalidInput,
    404: NotFound,
    405: MethodNotAllowed,
    408: RequestTimeout,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


@functools.cache
def _error_class(status: int) -> type[KmsError]:
    if status in _ERRORS:
        return _ERRORS[status]
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "HTTP error"
    attrs = {"code": phrase.lower().replace(" ", "-"), "title": phrase, "http_status": status}
    return cast(type[KmsError], type(f"Http{status}", (KmsError,), attrs))


def _detail(status: int) -> str:
    if status == HTTPStatus.BAD_REQUEST:
        return "the request is not valid HTTP/1.1 and was not read"
    if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        return "internal error; quote the request id"
    try:
        return HTTPStatus(status).description
    except ValueError:
        return "refused"


def _refusal(request: BaseRequest, status: int, allow: str | None = None) -> web.Response:
    """problem+json for one of aiohttp's own answers; the detail never echoes the request."""
    err = _error_class(status)(_detail(status))
    if allow is not None:
        err.headers["Allow"] = allow  # a 405 says which methods there are (RFC 9110 15.5.6)
    return problem_response(err, request.get(REQUEST_ID) or uuid.uuid4().hex)
