"""Bindings in PostgreSQL, and an in-process copy kept fresh by NOTIFY.

The table is small and read on every call, so each replica holds all of it in memory. A grant
or revoke commits with ``NOTIFY kmsd_bindings``; every replica's waker drops its copy on that
notification (and on any LISTEN reconnect), so a revocation takes effect everywhere within
milliseconds. A 60-second ceiling on the copy's age is the belt to those braces.
"""

from __future__ import annotations

import time
from typing import Final

import asyncpg

from kmsd.domain.access import Binding, parse_cidrs

CHANNEL: Final = "kmsd_bindings"
MAX_AGE_S: Final = 60.0
ALL = "SELECT id, principal, prefix, permission, cidrs FROM bindings ORDER BY id"
INSERT = """
INSERT INTO bindings (principal, prefix, permission, cidrs, created_by)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (principal, prefix, permission) DO UPDATE SET cidrs = EXCLUDED.cidrs
RETURNING id
"""
GET = "SELECT id, principal, prefix, permission, cidrs FROM bindings WHERE id = $1"
DELETE = "DELETE FROM bindings WHERE id = $1"
NOTIFY = "SELECT pg_notify('kmsd_bindings', '')"


def binding_of(row: asyncpg.Record) -> Binding:
    return Binding(
        row["id"], row["principal"], row["prefix"], row["permission"], parse_cidrs(row["cidrs"])
    )


class BindingsCache:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._bindings: list[Binding] | None = None
        self._loaded_at = 0.0
        self._generation = 0

    def invalidate(self, *_: object) -> None:
        self._bindings = None
        self._generation += 1

    async def all(self) -> list[Binding]:
        if self._bindings is not None and time.monotonic() - self._loaded_at <= MAX_AGE_S:
            return self._bindings
        generation = self._generation
        rows = await self._pool.fetch(ALL)
        fresh = [binding_of(r) for r in rows]
        # A revocation that arrived while we were reading may not be in these rows: use
        # them for this call, but do not keep them.
        if generation == self._generation:
            self._bindings, self._loaded_at = fresh, time.monotonic()
        return fresh
