"""The hostile-input suite's vocabulary: a case, a request on the wire, an answer, a tally.

Requests are written as the bytes a client sends (``Req.render``) and sent over a plain socket,
so a case can say exactly what an attacker sends: a header twice, a control character, bytes
that are not UTF-8, a broken chunked body. Placeholders such as ``{api}`` or ``{canary}`` are
filled when the case runs (tokens exist only once the suite has signed in); each case gets a
canary of its own, so a leak found at the end names the case that caused it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Header = tuple[str | bytes, str | bytes]


def _b(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


def canary_for(case_id: str) -> str:
    """A value no honest request carries, unique to one case (the same in every run)."""
    return "cnry-" + hashlib.sha256(case_id.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Req:
    """One HTTP/1.1 request as it goes on the wire.

    ``body`` given as a dict or list is sent as JSON; ``chunks`` sends the body chunked
    (sizes counted once the placeholders are filled), followed by ``ending``, the raw bytes
    of the last chunk and the trailer section; ``raw`` replaces the whole message (for
    requests no client library would send). ``source`` is the local address to connect from:
    every 127.0.0.0/8 address is this host, so a case can come from a second address.
    """

    method: str = "GET"
    target: str = "/"
    headers: Sequence[Header] = ()
    body: bytes | str | Mapping[str, Any] | list[Any] | None = None
    chunks: Sequence[bytes] | None = None
    ending: bytes = b"0\r\n\r\n"
    raw: bytes | None = None
    source: str = "127.0.0.1"

    def render(self, fill: Mapping[str, str]) -> bytes:
        def sub(data: bytes) -> bytes:
            for key, value in fill.items():
                data = data.replace(b"{" + key.encode() + b"}", value.encode())
            return data

        if self.raw is not None:
            return sub(self.raw)
        body = b""
        headers = [(_b(k), sub(_b(v))) for k, v in self.headers]
        if isinstance(self.body, Mapping | list):
            body = sub(json.dumps(self.body).encode())
            if not any(k.lower() == b"content-type" for k, _ in headers):
                headers.append((b"Content-Type", b"application/json"))
        elif self.body is not None:
            body = sub(_b(self.body))
        if self.chunks is not None:
            filled = [sub(c) for c in self.chunks]
            body = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in filled)
            body += sub(self.ending)
            headers.append((b"Transfer-Encoding", b"chunked"))
        names = {k.lower() for k, _ in headers}
        framed = b"transfer-encoding" in names or b"content-length" in names
        if not framed and (body or self.method in ("POST", "PUT", "PATCH")):
            headers.append((b"Content-Length", str(len(body)).encode()))
        head = [sub(_b(f"{self.method} {self.target} HTTP/1.1")), b"Host: kmsd"]
        head += [k + b": " + v for k, v in headers]
        head.append(b"Connection: close")
        return b"\r\n".join(head) + b"\r\n\r\n" + body


@dataclass
class Answer:
    status: int  # 0: the server closed the connection without answering
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    def json(self) -> Any:
        return json.loads(self.body or b"null")


def exchange(port: int, data: bytes, source: str = "127.0.0.1", timeout: float = 15) -> Answer:
    """Send ``data`` on a fresh connection from ``source``; read the whole answer."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
    ) as sock:
        sock.sendall(data)
        resp = http.client.HTTPResponse(sock)
        try:
            resp.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return Answer(0, {}, b"")
        body = resp.read()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)


def until(check: Callable[[], object], within: float = 20.0) -> bool:
    """Wait for ``check()`` to be true, polling, at most ``within`` seconds; say if it was."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@dataclass(frozen=True)
class Case:
    """One hostile input and what kmsd must answer: exactly ``status``, as problem+json."""

    id: str
    request: Req | Callable[[Any], Req]  # a callable builds it when the case runs
    status: int
    note: str = ""


@dataclass
class Result:
    case: str
    refused: bool  # answered as the table says
    accepted: bool  # the hostile input got through (a 2xx/3xx, or the outcome it must not have)
    server_error: bool  # a 5xx
    detail: str = ""


@dataclass
class Tally:
    """Per class: every case's result, for the summary the suite prints at the end."""

    classes: dict[str, list[Result]] = field(default_factory=dict)
    under_test: str = ""  # where the server's kmsd package came from

    def record(self, klass: str, result: Result) -> None:
        self.classes.setdefault(klass, []).append(result)

    def rows(self) -> list[tuple[str, int, int, int, int]]:
        out = []
        for klass in sorted(self.classes, key=_class_order):
            results = self.classes[klass]
            out.append(
                (
                    klass,
                    len(results),
                    sum(r.refused for r in results),
                    sum(r.accepted for r in results),
                    sum(r.server_error for r in results),
                )
            )
        return out


def _class_order(klass: str) -> tuple[int, str]:
    number = klass.split(maxsplit=1)[0]
    return (int(number) if number.isdigit() else 99, klass)
