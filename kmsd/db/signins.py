"""Single-use sign-ins: a signed request's key is recorded once, on any replica."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from kmsd.domain.signin import SignedLogin

RECORD_USE = """
INSERT INTO signin_seen (sig_hash, expires_at) VALUES ($1, $2)
ON CONFLICT (sig_hash) DO NOTHING
RETURNING true
"""
PURGE_EXPIRED = "DELETE FROM signin_seen WHERE expires_at < now()"
# A row is kept this long past its request's staleness. The staleness is judged by each
# replica's clock and the purge by PostgreSQL's: the margin covers replicas whose clocks run
# behind the database's (by up to an hour) so that none of them still accepts a purged key.
KEEP_PAST_STALE = timedelta(hours=1)


async def first_use(pool: asyncpg.Pool, signed: SignedLogin) -> bool:
    """Record ``signed``'s key; True if this is its first use anywhere, False for a replay."""
    expires: datetime = signed.usable_until + KEEP_PAST_STALE
    return await pool.fetchval(RECORD_USE, signed.replay_key, expires) is not None
