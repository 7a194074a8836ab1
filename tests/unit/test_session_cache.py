"""The session cache never outlives the session, its TTL, or its size bound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kmsd.db.sessions import SessionCache, token_hash
from kmsd.domain.signin import Principal

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WHO = Principal(
    "arn:aws:iam::123456789012:role/r", "arn:aws:sts::123456789012:assumed-role/r/s", "123456789012"
)


def test_hit_within_ttl_and_session() -> None:
    cache = SessionCache(ttl=30)
    cache.put(b"k", WHO, T0 + timedelta(hours=1), T0)
    assert cache.get(b"k", T0 + timedelta(seconds=29)) == WHO
    assert cache.get(b"k", T0 + timedelta(seconds=30)) is None


def test_never_past_the_session_expiry() -> None:
    cache = SessionCache(ttl=30)
    cache.put(b"k", WHO, T0 + timedelta(seconds=5), T0)
    assert cache.get(b"k", T0 + timedelta(seconds=4)) == WHO
    assert cache.get(b"k", T0 + timedelta(seconds=5)) is None


def test_size_bound_drops_the_oldest() -> None:
    cache = SessionCache(ttl=30, max_entries=2)
    for key in (b"a", b"b", b"c"):
        cache.put(key, WHO, T0 + timedelta(hours=1), T0)
    assert cache.get(b"a", T0) is None
    assert cache.get(b"b", T0) == WHO
    assert cache.get(b"c", T0) == WHO


def test_token_hash_is_sha256_not_the_token() -> None:
    digest = token_hash("kmsd.secret-token")
    assert len(digest) == 32
    assert b"secret-token" not in digest
