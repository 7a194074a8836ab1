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
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import random
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import structlog

from kmsd.domain.access import IpNetwork, ip_in
from kmsd.errors import InvalidInput
from kmsd.services.leadership import check_fence

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
           d.next_at, w.url, w.hmac_key
    FROM webhook_deliveries d JOIN webhooks w ON w.app_path = d.app_path
    WHERE d.delivered_at IS NULL AND d.attempts < $1
    ORDER BY d.app_path, d.id
) head WHERE head.next_at <= now()
"""
# Longer than a send can take (TIMEOUT_S), so a live sender's claim is never taken over.
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


async def check_destination(url: str, allowed: Sequence[IpNetwork]) -> None:
    """Refuse a URL whose host resolves to loopback, link-local, multicast or an unspecified
    address (kmsd itself, the instance metadata service...) unless ``allowed`` covers it."""
    host = urlsplit(url).hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except (OSError, UnicodeError, ValueError):  # IDNA refusals are UnicodeError/ValueError
        raise InvalidInput(f"webhook host {host!r} does not resolve") from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        internal = ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified
        if internal and not ip_in(ip, allowed):
            raise InvalidInput(
                f"webhook host {host!r} is {ip}, an internal address; allow it with "
                "KMSD_WEBHOOK_ALLOWED_CIDRS if that is really meant"
            )


def sign(key: str, timestamp: str, body: bytes) -> str:
    """The ``X-Kmsd-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


async def deliver_due(
    pool: asyncpg.Pool,
    http: aiohttp.ClientSession,
    allowed: Sequence[IpNetwork] = (),
    epoch: int | None = None,
) -> int:
    """Send the head delivery of every application that has one due; return how many landed.

    ``epoch`` is the leader's fencing token (FencedOut once another replica leads); None only
    where no leadership applies (tests that drive deliveries directly).
    """
    heads = await pool.fetch(HEADS, MAX_ATTEMPTS)
    claimed = []
    for row in heads:
        async with pool.acquire() as conn, conn.transaction():
            await check_fence(conn, epoch)
            if await conn.fetchval(CLAIM, row["id"], epoch or 0, CLAIM_TTL_S):
                claimed.append(row)
    results = await asyncio.gather(*(_deliver(pool, http, row, allowed) for row in claimed))
    return sum(results)


async def _deliver(
    pool: asyncpg.Pool, http: aiohttp.ClientSession, row: Any, allowed: Sequence[IpNetwork]
) -> bool:
    body = row["payload"].encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "kmsd-webhook",
        "X-Kmsd-Delivery": str(row["id"]),
        "X-Kmsd-Timestamp": timestamp,
        "X-Kmsd-Signature": sign(row["hmac_key"], timestamp, body),
    }
    try:
        await check_destination(row["url"], allowed)  # again: DNS may have changed since
        async with http.post(
            row["url"], data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)
        ) as resp:
            await resp.read()
            ok = 200 <= resp.status < 300
            error = None if ok else f"HTTP {resp.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        ok, error = False, type(exc).__name__
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
