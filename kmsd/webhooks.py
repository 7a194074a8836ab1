"""Webhook deliveries: each rotation event, signed, to each interested application, in order.

Deliveries are rows (written in the transaction of the event), so none is lost to a crash. The
scheduler's leader sends, per application, the oldest undelivered one only: a later event never
overtakes an earlier one that is being retried. A failed delivery is retried with exponential
backoff (capped at five minutes); the row keeps the last error.

Signature: ``X-Kmsd-Signature: sha256=HEX`` where HEX is HMAC-SHA256, keyed with the hook's
key, of ``TIMESTAMP + "." + BODY`` and ``X-Kmsd-Timestamp: TIMESTAMP`` (Unix seconds), so a
receiver can refuse replays of old deliveries. Events carry names, ids and phases, never a value.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import time
from typing import Any

import aiohttp
import asyncpg
import structlog

log = structlog.get_logger(__name__)

TIMEOUT_S = 10.0
MAX_BACKOFF_S = 300.0
_rng = random.Random()  # noqa: S311 - jitter, not a secret

HEADS = """
SELECT * FROM (
    SELECT DISTINCT ON (d.app_path) d.id, d.app_path, d.payload::text AS payload, d.attempts,
           d.next_at, w.url, w.hmac_key
    FROM webhook_deliveries d JOIN webhooks w ON w.app_path = d.app_path
    WHERE d.delivered_at IS NULL
    ORDER BY d.app_path, d.id
) head WHERE head.next_at <= now()
"""
DELIVERED = (
    "UPDATE webhook_deliveries SET delivered_at = now(), attempts = attempts + 1 WHERE id = $1"
)
FAILED = """
UPDATE webhook_deliveries
SET attempts = attempts + 1, last_error = $2, next_at = now() + $3 * interval '1 second'
WHERE id = $1
"""


def sign(key: str, timestamp: str, body: bytes) -> str:
    """The ``X-Kmsd-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


async def deliver_due(pool: asyncpg.Pool, http: aiohttp.ClientSession) -> int:
    """Send the head delivery of every application that has one due; return how many landed."""
    heads = await pool.fetch(HEADS)
    results = await asyncio.gather(*(_deliver(pool, http, row) for row in heads))
    return sum(results)


async def _deliver(pool: asyncpg.Pool, http: aiohttp.ClientSession, row: Any) -> bool:
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
        async with http.post(
            row["url"], data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)
        ) as resp:
            await resp.read()
            ok = 200 <= resp.status < 300
            error = None if ok else f"HTTP {resp.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        ok, error = False, type(exc).__name__
    if ok:
        await pool.execute(DELIVERED, row["id"])
        return True
    delay = min(MAX_BACKOFF_S, 2.0 ** row["attempts"]) * _rng.uniform(0.5, 1.0)
    await pool.execute(FAILED, row["id"], error, delay)
    log.warning(
        "webhook_failed", app=row["app_path"], delivery=row["id"], error=error, retry_in=delay
    )
    return False
