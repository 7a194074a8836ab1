"""Bearer sessions: only the sha256 of a token is stored, so a database dump signs nobody in."""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from kmsd.domain.signin import Principal

INSERT_SESSION = """
INSERT INTO sessions (token_hash, principal, caller_arn, source_ip, expires_at)
VALUES ($1, $2, $3, $4, $5)
"""
LOOKUP_SESSION = """
SELECT principal, caller_arn, source_ip, expires_at FROM sessions
WHERE token_hash = $1 AND expires_at > now()
"""
DELETE_SESSION = "DELETE FROM sessions WHERE token_hash = $1"
PURGE_EXPIRED = "DELETE FROM sessions WHERE expires_at < now() - interval '1 day'"


@dataclass(frozen=True, slots=True)
class Session:
    principal: Principal
    source_ip: str  # the address that signed in


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


API_PREFIX = "kmsd."


async def create_session(
    pool: asyncpg.Pool,
    who: Principal,
    source_ip: str,
    now: datetime,
    ttl: timedelta,
    *,
    prefix: str = API_PREFIX,
) -> tuple[str, datetime]:
    """Issue a new random token for ``who``; return it with its expiry."""
    token = prefix + secrets.token_urlsafe(32)
    expires = now + ttl
    await pool.execute(
        INSERT_SESSION, token_hash(token), who.arn, who.caller_arn, source_ip, expires
    )
    return token, expires


class SessionCache:
    """Tokens verified recently, so that 10,000 agents re-polling after a wake do not become
    10,000 session queries. An entry lives ``ttl`` seconds at most and never past the session's
    own expiry. A session ended (console sign-out) leaves this replica's cache at once and
    the others' within the TTL.
    """

    def __init__(self, ttl: float = 30.0, max_entries: int = 100_000) -> None:
        self._ttl = timedelta(seconds=ttl)
        self._max = max_entries
        self._entries: OrderedDict[bytes, tuple[Session, datetime]] = OrderedDict()

    def get(self, key: bytes, now: datetime) -> Session | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        session, valid_until = entry
        if now >= valid_until:
            del self._entries[key]
            return None
        return session

    def drop(self, key: bytes) -> None:
        self._entries.pop(key, None)

    def put(self, key: bytes, session: Session, expires_at: datetime, now: datetime) -> None:
        self._entries[key] = (session, min(expires_at, now + self._ttl))
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


async def lookup(
    pool: asyncpg.Pool, key: bytes, cache: SessionCache, now: datetime
) -> Session | None:
    """Resolve a bearer token, by its ``token_hash``, to its session (cache, then PostgreSQL)."""
    session = cache.get(key, now)
    if session is not None:
        return session
    row = await pool.fetchrow(LOOKUP_SESSION, key)
    if row is None:
        return None
    who = Principal(row["principal"], row["caller_arn"], row["principal"].split(":")[4])
    session = Session(who, row["source_ip"])
    cache.put(key, session, row["expires_at"], now)
    return session


async def revoke(pool: asyncpg.Pool, key: bytes, cache: SessionCache) -> None:
    """End the session of ``key`` (its ``token_hash``)."""
    await pool.execute(DELETE_SESSION, key)
    cache.drop(key)
