"""Class 2, webhook SSRF: a webhook can never be pointed at kmsd's own network.

Every URL below is refused when it is set (400 problem+json), by the outbound guard
(kmsd.domain.outbound): private, loopback, link-local, CGNAT and ULA ranges, IPv4 hidden in
IPv6 (mapped, compatible, NAT64), cloud metadata, userinfo, legacy numeric hosts, malformed
URLs. The server allows one receiver range, 127.0.0.77/32, and none of these is in it.

The last case is a delivery: an allowed receiver answering 302 to loopback. kmsd must not
follow it; the Location is never visited and the delivery is recorded as failed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.security.conftest import WEBHOOK_RECEIVER, Target
from tests.security.wire import Case, Req, until

KLASS = "2 webhook SSRF"
HOOK_APP = "sec/hook"  # an application of its own: its rotations feed only this module's hook


def hook(url: str) -> Req:
    return Req(
        "PUT",
        f"/v1/webhooks/{HOOK_APP}",
        headers=[("Authorization", "Bearer {api}")],
        body={"url": url},
    )


URLS = {
    # IPv4 hidden in IPv6: judged by the IPv4 address it reaches
    "v4-mapped-loopback": "http://[::ffff:127.0.0.1]:8700/",
    "v4-mapped-hex-loopback": "http://[::ffff:7f00:1]:8700/",
    "v4-mapped-metadata": "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "v4-mapped-hex-metadata": "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
    "v4-mapped-long-form": "http://[0:0:0:0:0:ffff:127.0.0.1]/",
    "v4-compatible-loopback": "http://[::127.0.0.1]:8700/",
    "nat64-metadata": "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
    "6to4-loopback": "http://[2002:7f00:1::]/",
    # cloud metadata endpoints
    "metadata-v4": "http://169.254.169.254/latest/meta-data/",
    "metadata-v6-ec2": "http://[fd00:ec2::254]/latest/meta-data/",
    "metadata-ecs": "http://169.254.170.2/v2/credentials",
    "metadata-alibaba": "http://100.100.100.200/latest/meta-data/",
    # kmsd's own host and networks
    "loopback": "http://127.0.0.1:8700/v1/nodes",
    "loopback-other": "http://127.0.0.2:8700/",
    "loopback-v6": "http://[::1]:8700/",
    "localhost": "http://localhost:8700/",
    "localhost-dot": "http://localhost.:8700/",
    "localhost-uppercase": "http://LOCALHOST:8700/",
    "localhost-circled-letters": "http://\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3:8700/",
    "loopback-trailing-dot": "http://127.0.0.1.:8700/",
    "unspecified": "http://0.0.0.0:8700/",
    "unspecified-v6": "http://[::]:8700/",
    "rfc1918-10": "http://10.0.0.1/",
    "rfc1918-10-top": "http://10.255.255.254/",
    "rfc1918-172-16": "http://172.16.0.1/",
    "rfc1918-172-31": "http://172.31.255.254/",
    "rfc1918-192-168": "http://192.168.1.1/",
    "cgnat-100-64": "http://100.64.0.1/",
    "cgnat-100-127": "http://100.127.255.254/",
    "ula-fc00": "http://[fc00::1]/",
    "ula-fd12": "http://[fd12:3456::1]/",
    "link-local-v6": "http://[fe80::1]/",
    "site-local-v6": "http://[fec0::1]/",
    "multicast": "http://224.0.0.1/",
    # hosts written to fool a parser
    "userinfo": "http://user:pw@example.com/",
    "userinfo-at-loopback": "http://example.com@127.0.0.1:8700/",
    "userinfo-on-allowed-receiver": f"http://u:p@{WEBHOOK_RECEIVER}/",
    "decimal-host": "http://2130706433:8700/",
    "octal-host": "http://0177.0.0.1:8700/",
    "octal-whole-host": "http://017700000001:8700/",
    "hex-host": "http://0x7f.0.0.1:8700/",
    "short-host": "http://127.1:8700/",
    "zero-padded-host": "http://127.000.000.001:8700/",
    "unclosed-v6": "http://[::1",
    "label-over-63": "http://" + "a" * 64 + ".example.com/",
    "not-http": "ftp://example.com/",
    "file": "file:///etc/passwd",
    "space-in-host": "http://exa mple.com/",
}

CASES: list[Any] = [Case(name, hook(url), 400) for name, url in URLS.items()]
CASES.append(Case("redirect-to-loopback", Req(), 0, note="a delivery: see _redirect_case"))


class Receiver(ThreadingHTTPServer):
    """A real HTTP server that records each request and answers with ``status``."""

    def __init__(self, host: str, status: int, location: str = "") -> None:
        self.status, self.location = status, location
        self.hits: list[str] = []
        super().__init__((host, 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads the hits."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.hits.append(self.path)
        self.send_response(self.server.status)
        if self.server.location:
            self.send_header("Location", self.server.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST


@pytest.fixture(scope="module")
def receivers(target: Target) -> Iterator[tuple[Receiver, Receiver]]:
    target.call("PUT", f"/v1/nodes/{HOOK_APP}?parents=true")
    target.call("PUT", f"/v1/secrets/{HOOK_APP}/db", {"kind": "json", "value": {"p": "x"}})
    inside = Receiver("127.0.0.1", 204)  # loopback: where the redirect points
    redirector = Receiver(WEBHOOK_RECEIVER, 302, location=inside.url)
    try:
        yield redirector, inside
    finally:
        redirector.close()
        inside.close()


def _redirect_case(target: Target, receivers: tuple[Receiver, Receiver]) -> None:
    redirector, inside = receivers
    target.call("PUT", f"/v1/webhooks/{HOOK_APP}", {"url": redirector.url})
    target.call("POST", "/v1/rotations", {"path": HOOK_APP, "name": "db", "value": {"p": "y"}})

    def settled() -> list[Any]:
        return target.db(
            "SELECT last_error, delivered_at FROM webhook_deliveries WHERE app_path = $1"
            " AND (last_error IS NOT NULL OR delivered_at IS NOT NULL)",
            HOOK_APP,
        )

    until(lambda: redirector.hits and settled())
    rows = settled()
    followed = bool(inside.hits) or any(r["delivered_at"] for r in rows)
    target.outcome(
        KLASS,
        "redirect-to-loopback",
        held=bool(redirector.hits) and not followed,
        accepted=followed,
        detail=f"redirector {len(redirector.hits)} hit(s), loopback {len(inside.hits)}, {rows}",
    )
    assert redirector.hits, "the allowed receiver was never called"
    assert inside.hits == [], "kmsd followed the redirect to loopback"
    assert rows, "the delivery was never recorded as failed"
    assert rows[0]["delivered_at"] is None
    assert "redirect" in rows[0]["last_error"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused(target: Target, receivers: tuple[Receiver, Receiver], case: Case) -> None:
    if case.id == "redirect-to-loopback":
        _redirect_case(target, receivers)
        return
    target.check(KLASS, case)
