"""Access decisions (pure): bindings of AWS principals to path prefixes, and IP allowlists.

Rules, in order:
1. Principals matching ``KMSD_ADMINS`` are admins everywhere (the bootstrap).
2. Otherwise a call needs a *binding* whose principal pattern matches the caller, whose prefix
   covers the path (segment-wise: ``prod/pay`` covers ``prod/pay/us``, not ``prod/payments``),
   and whose permission implies the one needed (``GRANTS``). Deny by default.
3. CIDR restrictions flow downwards: if any binding of the caller that covers the path lists
   CIDRs and the client IP is outside them, the call is denied, whatever a binding on a longer
   prefix says. A longer prefix never widens a shorter one's denial.

Patterns: ``*`` matches within one ARN part only (never across ``:``), and only in the
resource part; the account is always explicit, so a binding can never reach another account.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from kmsd.errors import InvalidInput

PERMISSIONS = ("read", "view", "edit", "rotate", "admin")
# What each permission lets a caller do. read: machines (effective sets, watch); view:
# operators (metadata, adoption, audit); edit: change the tree and secrets; rotate: drive
# rotations; admin: everything, including bindings under the prefix.
GRANTS: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "view": frozenset({"view", "read"}),
    "edit": frozenset({"edit", "view", "read"}),
    "rotate": frozenset({"rotate", "view", "read"}),
    "admin": frozenset(PERMISSIONS),
}
ROOT = "*"  # the prefix that covers every path
_PATTERN_RE = re.compile(
    r"^arn:(?:aws|aws-cn|aws-us-gov):iam::[0-9]{12}:(?:role|user)/[A-Za-z0-9+=,.@_/*-]{1,512}$"
)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile("".join("[^:]*" if ch == "*" else re.escape(ch) for ch in pattern))


def arn_matches(pattern: str, arn: str) -> bool:
    """Return whether ``arn`` matches ``pattern`` (``*`` never crosses a ``:``)."""
    return _compile(pattern).fullmatch(arn) is not None


def is_admin(arn: str, admins: Iterable[str]) -> bool:
    """Return whether ``arn`` matches one of the bootstrap admin patterns."""
    return any(arn_matches(p, arn) for p in admins)


def check_pattern(pattern: str) -> str:
    """Refuse principal patterns with a wildcard outside the name, or no explicit account."""
    if not _PATTERN_RE.fullmatch(pattern):
        raise InvalidInput(
            "principal must be an IAM role or user ARN, arn:aws:iam::ACCOUNT:role/NAME; "
            "'*' is allowed only in the name and the 12-digit account must be explicit",
            rule="arn:PARTITION:iam::ACCOUNT:(role|user)/NAME",
        )
    return pattern


def parse_cidrs(raw: Iterable[str]) -> tuple[IpNetwork, ...]:
    """Parse CIDRs (``10.0.0.0/8``, ``2001:db8::/32``, a bare address = one host)."""
    out = []
    for text in raw:
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise InvalidInput(f"{text!r} is not a CIDR such as 10.0.0.0/8") from None
    return tuple(out)


def covers(prefix: str, path: str) -> bool:
    """Whether a binding on ``prefix`` applies to ``path`` (segment-wise)."""
    return prefix in (ROOT, path) or path.startswith(prefix + "/")


def ip_in(ip: IpAddress | None, cidrs: Sequence[IpNetwork]) -> bool:
    return ip is not None and any(ip.version == net.version and ip in net for net in cidrs)


@dataclass(frozen=True, slots=True)
class Binding:
    id: int
    principal: str
    prefix: str
    permission: str
    cidrs: tuple[IpNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str


def decide(
    arn: str,
    path: str,
    needed: str,
    *,
    ip: IpAddress | None,
    bindings: Iterable[Binding],
    admins: Iterable[str] = (),
) -> Decision:
    """Decide whether ``arn`` calling from ``ip`` may do ``needed`` on ``path``."""
    if is_admin(arn, admins):
        return Decision(True, "bootstrap admin (KMSD_ADMINS)")
    mine = [b for b in bindings if covers(b.prefix, path) and arn_matches(b.principal, arn)]
    fenced = [b for b in mine if b.cidrs and not ip_in(ip, b.cidrs)]
    if fenced:
        b = fenced[0]
        return Decision(False, f"binding {b.id} on {b.prefix!r} admits calls only from its CIDRs")
    for b in mine:
        if needed in GRANTS[b.permission]:
            return Decision(True, f"binding {b.id}: {b.permission} on {b.prefix!r}")
    return Decision(False, f"no binding grants {needed} on {path!r}")


def client_ip(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[IpNetwork]
) -> IpAddress | None:
    """The caller's address: the socket peer, unless the peer is a trusted proxy.

    Behind trusted proxies, X-Forwarded-For is read from the right and the first entry that is
    not itself a trusted proxy is the client (entries further left are whatever the client
    chose to send). From an untrusted peer the header is ignored entirely.
    """
    try:
        addr: IpAddress | None = ipaddress.ip_address(peer) if peer else None
    except ValueError:
        return None
    if addr is None or not forwarded_for or not ip_in(addr, trusted):
        return addr
    for raw in reversed(forwarded_for.split(",")):
        try:
            hop = ipaddress.ip_address(raw.strip())
        except ValueError:
            return addr  # a garbled chain: trust nothing beyond our own proxy
        if not ip_in(hop, trusted):
            return hop
        addr = hop
    return addr
