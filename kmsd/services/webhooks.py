"""Webhook deliveries: each rotation event, signed, to each interested application, in order.

Deliveries are rows (written in the transaction of the event), so none is lost to a crash. The
scheduler's leader sends, per application, the oldest undelivered one only: a later event never
overtakes an earlier one that is being retried. A failed delivery is retried with exponential
backoff (capped at five minutes); the row keeps the last error.

Each delivery is claimed before it is sent, by the leader's epoch under the leadership fence
(``kmsd.services.leadership``): a deposed leader cannot claim, so a delivery id is sent by one
leader; a claim older than CLAIM_TTL_S (the sender died mid-send) is free again. Receivers
de-duplicate by ``X-Kmsd-Delivery`` as at-least-once delivery over HTTP requires.

Signature: ``X-Kmsd-Signature: sha256=HEX`` where HEX is HMAC-SHA256, keyed with the hook's
key, of ``TIMESTAMP + "." + BODY`` and ``X-Kmsd-Timestamp: TIMESTAMP`` (Unix seconds), so a
receiver can refuse replays of old deliveries. Events carry names, ids and phases, never a value.
The key is not stored: each delivery derives it with KMS (``kmsd.services.webhook_keys``) from
the salt and KMS key id in the hook's row; a KMS failure is a failed delivery, retried like any.
Rows from before derived keys still hold their key (``hmac_key``) and are signed with it.

Destination guard (SSRF): the URL and every address its host resolves to are judged by
``kmsd.domain.outbound`` when the hook is set and again for every delivery, with one lookup per
delivery whose checked addresses are the only ones the connection may use (``PinnedResolver``):
a DNS answer that changes between the check and the connection (rebinding) cannot steer the
POST elsewhere. Redirects are never followed; a 3xx is a failed delivery ("redirect refused").
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import random
import socket
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import asyncpg
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult

from kmsd.domain import outbound
from kmsd.domain.access import IpAddress, IpNetwork
from kmsd.errors import InvalidInput, UpstreamError
from kmsd.services.leadership import check_fence
from kmsd.services.webhook_keys import WebhookKeys

log = structlog.get_logger(__name__)

TIMEOUT_S = 10.0
MAX_BACKOFF_S = 300.0
_rng = random.Random()  # noqa: S311 - jitter, not a secret

# A delivery refused this many times (about a day of retries) is given up: it stays in the
# table with its last error, and the application's later events go on.
MAX_ATTEMPTS = 300
HEADS = """
SELECT * FROM (
    SELECT DISTINCT ON (d.app_path) d.id, d.app_path, d.payload::text AS payload, d.attempts,
           d.next_at, w.url, w.hmac_key, w.mac_key_id, w.mac_salt
    FROM webhook_deliveries d JOIN webhooks w ON w.app_path = d.app_path
    WHERE d.delivered_at IS NULL AND d.attempts < $1
    ORDER BY d.app_path, d.id
) head WHERE head.next_at <= now()
"""
# Longer than a send can take (deriving the key, bounded by the AWS call timeout of at most
# 29 s, then TIMEOUT_S), so a live sender's claim is never taken over.
CLAIM_TTL_S = 60.0
CLAIM = """
UPDATE webhook_deliveries SET claimed_epoch = $2, claimed_at = now()
WHERE id = $1 AND delivered_at IS NULL
  AND (claimed_at IS NULL OR claimed_at < now() - $3 * interval '1 second')
RETURNING id
"""
DELIVERED = """
UPDATE webhook_deliveries SET delivered_at = now(), attempts = attempts + 1, claimed_at = NULL
WHERE id = $1
"""
FAILED = """
UPDATE webhook_deliveries
SET attempts = attempts + 1, last_error = $2, next_at = now() + $3 * interval '1 second',
    claimed_at = NULL
WHERE id = $1
"""


class PinnedResolver(AbstractResolver):
    """Resolve one host to the addresses already checked for it, and nothing else.

    The connector asks its resolver for the URL's host; answering with the checked addresses
    pins the connection to them (no second lookup that DNS rebinding could answer
    differently), while the URL - hence the Host header and TLS SNI and certificate check -
    keeps the host name.
    """

    def __init__(self, host: str, addresses: Sequence[IpAddress]) -> None:
        self._host = host
        self._addresses = tuple(addresses)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        if host.lower().removesuffix(".") != self._host:
            raise OSError(f"webhook connection to {host!r}, not the checked {self._host!r}")
        found: list[ResolveResult] = []
        for ip in self._addresses:
            ip_family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
            if family in (socket.AF_UNSPEC, ip_family):
                found.append(
                    {
                        "hostname": host,
                        "host": str(ip),
                        "port": port,
                        "family": ip_family,
                        "proto": socket.IPPROTO_TCP,
                        "flags": socket.AI_NUMERICHOST,
                    }
                )
        if not found:
            raise OSError(f"no checked address of {host!r} in family {family!r}")
        return found

    async def close(self) -> None:
        """Nothing to release: no lookups are made."""


async def resolve_checked(
    url: str, allowed: Sequence[IpNetwork]
) -> tuple[str, tuple[IpAddress, ...]]:
    """Return the URL's host and every address it resolves to, or raise if any is refused.

    One lookup; the caller connects to these addresses only (``PinnedResolver``). Refusing
    when *any* address is refused means a name cannot mix a public address with an internal
    one and hope the connection picks the latter.
    """
    _, host, port = outbound.check_url(url)
    try:
        addresses: tuple[IpAddress, ...] = (ipaddress.ip_address(host),)
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError, ValueError):  # IDNA refusals are UnicodeError/ValueError
            raise InvalidInput(f"webhook host {host!r} does not resolve") from None
        addresses = tuple(
            dict.fromkeys(ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos)
        )
        if not addresses:
            raise InvalidInput(f"webhook host {host!r} does not resolve") from None
    for ip in addresses:
        reason = outbound.classify(ip, allowed)
        if reason is not None:
            raise outbound.refusal(host, ip, reason)
    return host, addresses


async def check_destination(url: str, allowed: Sequence[IpNetwork]) -> None:
    """Refuse a URL kmsd must not send to (see ``kmsd.domain.outbound``); the set-time check."""
    await resolve_checked(url, allowed)


def sign(key: str, timestamp: str, body: bytes) -> str:
    """The ``X-Kmsd-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


async def deliver_due(
    pool: asyncpg.Pool,
    http: aiohttp.ClientSession,
    allowed: Sequence[IpNetwork] = (),
    epoch: int | None = None,
    *,
    keys: WebhookKeys,
) -> int:
    """Send the head delivery of every application that has one due; return how many landed.

    ``epoch`` is the leader's fencing token (FencedOut once another replica leads); None only
    where no leadership applies (tests that drive deliveries directly). ``http`` is the app's
    session, kept for its callers; a delivery sends through a connector of its own, pinned to
    the addresses checked for that delivery (``_send``). ``keys`` derives the signing keys.
    """
    heads = await pool.fetch(HEADS, MAX_ATTEMPTS)
    claimed = []
    for row in heads:
        async with pool.acquire() as conn, conn.transaction():
            await check_fence(conn, epoch)
            if await conn.fetchval(CLAIM, row["id"], epoch or 0, CLAIM_TTL_S):
                claimed.append(row)
    results = await asyncio.gather(*(_deliver(pool, row, allowed, keys) for row in claimed))
    return sum(results)


async def signing_key(row: Any, keys: WebhookKeys) -> str:
    """The key a hook row signs with: derived from its salt, or (older rows) the stored one."""
    if row["mac_salt"] is None:
        return str(row["hmac_key"])
    return await keys.derive(row["mac_key_id"], row["app_path"], bytes(row["mac_salt"]))


async def _deliver(
    pool: asyncpg.Pool, row: Any, allowed: Sequence[IpNetwork], keys: WebhookKeys
) -> bool:
    body = row["payload"].encode()
    try:
        key = await signing_key(row, keys)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "kmsd-webhook",
            "X-Kmsd-Delivery": str(row["id"]),
            "X-Kmsd-Timestamp": timestamp,
            "X-Kmsd-Signature": sign(key, timestamp, body),
        }
        async with asyncio.timeout(TIMEOUT_S):  # the lookup, the connection and the answer
            ok, error = await _send(row["url"], body, headers, allowed)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        ok, error = False, type(exc).__name__
    except UpstreamError as exc:  # KMS did not derive the key: nothing was sent
        ok, error = False, f"signing key: {exc.detail}"
    except InvalidInput as exc:
        ok, error = False, exc.detail
    if ok:
        await pool.execute(DELIVERED, row["id"])
        return True
    delay = min(MAX_BACKOFF_S, 2.0 ** row["attempts"]) * _rng.uniform(0.5, 1.0)
    await pool.execute(FAILED, row["id"], error, delay)
    log.warning(
        "webhook_failed", app=row["app_path"], delivery=row["id"], error=error, retry_in=delay
    )
    return False


async def _send(
    url: str, body: bytes, headers: dict[str, str], allowed: Sequence[IpNetwork]
) -> tuple[bool, str | None]:
    """POST once to the checked addresses of the URL's host; never follow a redirect."""
    host, addresses = await resolve_checked(url, allowed)  # again: DNS may have changed
    # A connector of its own per delivery: its only resolver is the pinned one, so it cannot
    # reach an address that was not checked (no shared DNS cache, no pooled connection to
    # another host's address).
    connector = aiohttp.TCPConnector(
        resolver=PinnedResolver(host, addresses), use_dns_cache=False, force_close=True
    )
    async with (
        aiohttp.ClientSession(connector=connector, trust_env=False) as session,
        session.post(url, data=body, headers=headers, allow_redirects=False) as resp,
    ):
        await resp.read()
        if 300 <= resp.status < 400:  # a redirect is not re-checked: it is not followed
            return False, f"redirect refused (HTTP {resp.status})"
        if 200 <= resp.status < 300:
            return True, None
        return False, f"HTTP {resp.status}"
