"""The outbound-URL guard (pure): which URLs and addresses kmsd may send a request to.

Webhooks make kmsd send a request to a URL its caller chose, so a hostile URL turns kmsd into
a proxy onto its own network: the instance metadata service (role credentials), kmsd's own
port, a database on a private address. Rules, in order:

1. ``check_url``: http or https only, no ``user:pass@``, a host (a DNS name in ASCII, IDNs as
   ``xn--``, or an IP literal; no legacy numeric forms such as ``2130706433`` or ``127.1``), a
   port in 1-65535 and a closed ``[IPv6]`` literal. A bad URL is the caller's 400.
2. ``classify`` judges each address the host resolves to (the caller checks *every* one, and
   then connects to those checked addresses only - see ``kmsd.services.webhooks``):
   a. An address that embeds an IPv4 address - IPv4-mapped ``::ffff:a.b.c.d``,
      IPv4-compatible ``::a.b.c.d``, 6to4 ``2002:AABB:CCDD::/48``, NAT64 ``64:ff9b::/96``
      and the local-use ``64:ff9b:1::/48``, Teredo - is judged by that IPv4 address too:
      the packet ends up there.
   b. Cloud metadata endpoints are refused always: the allowlist cannot unlock them.
   c. An address (or its embedded IPv4) inside the operator's allowlist
      (``KMSD_WEBHOOK_ALLOWED_CIDRS``) is allowed: internal receivers, explicitly.
   d. Every other address that is not public is refused with the range it falls in (the
      explicit tables below), and ``not is_global`` catches whatever the tables miss.

``classify`` returns the reason for a refusal, or None for an address kmsd may reach.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from kmsd.domain.access import IpAddress, IpNetwork, ip_in
from kmsd.errors import InvalidInput

# The instance metadata services and credential endpoints of the clouds kmsd runs in: each
# hands out the host's role credentials to whoever asks from the host, so no allowlist entry,
# however broad (169.254.0.0/16, 100.64.0.0/10), reaches them.
METADATA: dict[IpAddress, str] = {
    ipaddress.ip_address("169.254.169.254"): "the instance metadata service (AWS, GCP, Azure)",
    ipaddress.ip_address("fd00:ec2::254"): "the AWS instance metadata service over IPv6",
    ipaddress.ip_address("169.254.170.2"): "the ECS task credentials endpoint",
    ipaddress.ip_address("169.254.170.23"): "the EKS Pod Identity agent",
    ipaddress.ip_address("fd00:ec2::23"): "the EKS Pod Identity agent over IPv6",
    ipaddress.ip_address("100.100.100.200"): "the Alibaba Cloud metadata service",
    ipaddress.ip_address("192.0.0.192"): "the Oracle Cloud metadata service",
}

# Ranges that are not the public internet, each with the reason shown to the caller. The
# first match wins, so narrower ranges come before the ones that contain them.
_V4_RANGES: tuple[tuple[IpNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), reason)
    for net, reason in (
        ("0.0.0.0/8", "an unspecified ('this network') address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("10.0.0.0/8", "a private address (RFC 1918)"),
        ("172.16.0.0/12", "a private address (RFC 1918)"),
        ("192.168.0.0/16", "a private address (RFC 1918)"),
        ("100.64.0.0/10", "a carrier-grade NAT address (RFC 6598)"),
        ("192.0.0.0/24", "an IETF protocol assignment (RFC 6890)"),
        ("192.0.2.0/24", "a documentation address (RFC 5737)"),
        ("198.51.100.0/24", "a documentation address (RFC 5737)"),
        ("203.0.113.0/24", "a documentation address (RFC 5737)"),
        ("198.18.0.0/15", "a benchmarking address (RFC 2544)"),
        ("192.88.99.0/24", "a 6to4 relay anycast address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "a reserved address"),
    )
)
_V6_RANGES: tuple[tuple[IpNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), reason)
    for net, reason in (
        ("::/128", "the unspecified address"),
        ("::1/128", "a loopback address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("fc00::/7", "a unique local address (ULA, fc00::/7)"),
        ("ff00::/8", "a multicast address"),
        ("100::/64", "a discard-only address (RFC 6666)"),
        ("2001:db8::/32", "a documentation address (RFC 3849)"),
        ("3fff::/20", "a documentation address (RFC 9637)"),
        ("2001::/23", "an IETF protocol assignment (RFC 2928)"),
        ("64:ff9b:1::/48", "a local-use NAT64 address (RFC 8215)"),
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
# Prefixes that are nothing but a way to write an IPv4 address: judged by that address alone.
_PURE_WRAPPERS = (_MAPPED, _COMPATIBLE, _NAT64)


def embedded_ipv4(ip: IpAddress) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address a packet to ``ip`` reaches in the end, if ``ip`` embeds one."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    candidates = (
        ip.ipv4_mapped,
        ip.sixtofour,
        ip.teredo[1] if ip.teredo else None,  # the client behind the tunnel
        # The local-use NAT64 prefix is most often used as a /96, like the well-known one.
        low32 if ip in _NAT64 or ip in _NAT64_LOCAL else None,
        low32 if ip in _COMPATIBLE and int(ip) > 1 else None,  # ::a.b.c.d, not :: or ::1
    )
    return next((found for found in candidates if found is not None), None)


# What the range tables miss but ipaddress knows is not public (reserved, future assignments).
_PROPERTIES: tuple[tuple[str, str], ...] = (
    ("is_loopback", "a loopback address"),
    ("is_link_local", "a link-local address"),
    ("is_multicast", "a multicast address"),
    ("is_unspecified", "an unspecified address"),
    ("is_reserved", "a reserved address"),
    ("is_private", "not a public address"),
)


def _range_reason(ip: IpAddress) -> str | None:
    table = _V4_RANGES if isinstance(ip, ipaddress.IPv4Address) else _V6_RANGES
    found = next((reason for net, reason in table if ip.version == net.version and ip in net), None)
    found = found or next((reason for prop, reason in _PROPERTIES if getattr(ip, prop)), None)
    return found or (None if ip.is_global else "not a public address")


def classify(ip: IpAddress, allowed: Sequence[IpNetwork] = ()) -> str | None:
    """Return why kmsd must not connect to ``ip``, or None when it may."""
    inner = embedded_ipv4(ip)
    for candidate in (ip, inner):
        if candidate is not None and candidate in METADATA:
            return f"a cloud metadata endpoint, {METADATA[candidate]} ({candidate})"
    if ip_in(ip, allowed) or ip_in(inner, allowed):
        return None
    if inner is not None:
        reason = _range_reason(inner)
        if reason is not None:
            return f"{reason} ({inner}, embedded in {ip})"
        if any(ip in net for net in _PURE_WRAPPERS):
            return None
    return _range_reason(ip)


def refusal(host: str, ip: IpAddress, reason: str) -> InvalidInput:
    """The error for a host that is (or resolves to) a refused address."""
    shown = host if host == str(ip) else f"{host!r} resolves to {ip}, which"
    return InvalidInput(
        f"webhook host {shown} is {reason}; only public addresses are reached unless "
        "KMSD_WEBHOOK_ALLOWED_CIDRS allows the range (metadata services never)",
        host=host,
        address=str(ip),
    )


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def check_url(url: str) -> tuple[str, str, int]:
    """Return ``(scheme, host, port)`` of an outbound URL, or raise InvalidInput saying why not.

    ``host`` is lower-case, without the brackets of an IPv6 literal or a trailing dot.
    """
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port  # .port refuses a port that is not 0-65535
    except ValueError as exc:  # an unclosed [IPv6 literal, a port that is not a number
        raise InvalidInput(f"'url' is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidInput(f"'url' must be http or https, not {parts.scheme or 'no scheme'!r}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidInput("'url' must not carry credentials (user:password@); sign with HMAC")
    if not host:
        raise InvalidInput("'url' has no host")
    if port == 0:
        raise InvalidInput("'url' has port 0; a port is 1-65535")
    host = host.removesuffix(".")
    bracketed = parts.netloc.rpartition("@")[2].startswith("[")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        if bracketed:
            raise InvalidInput(f"'url' has [{host}], which is not an IPv6 address") from None
        labels = host.split(".")
        if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
            raise InvalidInput(
                "'url' must have a host name (ASCII, IDNs as xn--) or an IP address"
            ) from None
        if _NUMERIC_LABEL.fullmatch(labels[-1]):  # 2130706433, 127.1, 0x7f.1: no DNS name
            raise InvalidInput(
                f"'url' host {host!r} is neither a DNS name nor an IP address in canonical form"
            ) from None
    else:
        if literal.version == 6 and not bracketed:
            raise InvalidInput("'url' must write an IPv6 address in brackets: http://[::1]/")
        if isinstance(literal, ipaddress.IPv6Address) and literal.scope_id:
            raise InvalidInput("'url' must not carry an IPv6 zone (%...)")
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]
