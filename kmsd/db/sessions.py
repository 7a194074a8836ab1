"""Bearer sessions: only the sha256 of a token is stored, so a database dump signs nobody in."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

import asyncpg

from kmsd.domain.signin import Principal

INSERT_SESSION = """
INSERT INTO sessions (token_hash, principal, caller_arn, source_ip, expires_at)
VALUES ($1, $2, $3, $4, $5)
"""
LOOKUP_SESSION = """
SELECT principal, caller_arn FROM sessions WHERE token_hash = $1 AND expires_at > now()
"""
PURGE_EXPIRED = "DELETE FROM sessions WHERE expires_at < now() - interval '1 day'"


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_session(
    pool: asyncpg.Pool, who: Principal, source_ip: str, now: datetime, ttl: timedelta
) -> tuple[str, datetime]:
    """Issue a new random token for ``who``; return it with its expiry."""
    token = "kmsd." + secrets.token_urlsafe(32)
    expires = now + ttl
    await pool.execute(
        INSERT_SESSION, token_hash(token), who.arn, who.caller_arn, source_ip, expires
    )
    return token, expires


async def lookup(pool: asyncpg.Pool, token: str) -> Principal | None:
    row = await pool.fetchrow(LOOKUP_SESSION, token_hash(token))
    if row is None:
        return None
    return Principal(row["principal"], row["caller_arn"], row["principal"].split(":")[4])
