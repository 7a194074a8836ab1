"""Waiting for PostgreSQL at start-up.

kmsd is often started beside its database (a compose file, a pod whose RDS proxy is not ready,
a host rebooting): a server that is not reachable *yet* is not a reason to die. Before the app
starts, ``wait_for_database`` tries to connect with capped, jittered backoff, logs one
``database_unreachable`` line per failed attempt (the error's class, the seconds left, the DSN
with its password masked) and gives up with ``DatabaseUnreachable`` when the time is up.

Answers that no amount of waiting will change (a wrong password, a database that does not
exist, a malformed DSN) raise ``DatabaseRefused`` at once: they need an operator, not time.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import structlog

# The pure backoff lives with kmsctl's (one implementation for both retry loops).
from kmsd.domain.backoff import Backoff

log = structlog.get_logger(__name__)

# 0.2 s: a database that is just finishing its start-up is used at once; 5 s: a server that
# comes back after a minute is noticed within seconds, without hammering a struggling one.
RETRY_INITIAL_S = 0.2
RETRY_CAP_S = 5.0
# One attempt never takes longer than this (a black-holed address would otherwise eat the
# whole wait in asyncpg's 60 s default).
ATTEMPT_TIMEOUT_S = 10.0
MASK = "***"

# SQLSTATE classes that waiting does not fix: 28 (authorisation: user, password, pg_hba) and
# 3D (the database does not exist).
_PERMANENT_SQLSTATE_CLASSES = ("28", "3D")


class DatabaseStartError(Exception):
    """kmsd cannot use its database; the message is one line for the operator."""


class DatabaseUnreachable(DatabaseStartError):
    """Every attempt within the wait failed."""


class DatabaseRefused(DatabaseStartError):
    """The database answered, and the answer will not change by waiting."""


def redact_dsn(dsn: str) -> str:
    """``dsn`` with any password (in the userinfo or ``?password=``) replaced by ``***``."""
    try:
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, sep, password = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{hostport}" if sep and password else netloc
        query = urlencode(
            [
                (k, MASK if k.lower() == "password" else v)
                for k, v in parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="/*",
        )
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "(unparseable DSN)"


def _password(dsn: str) -> str | None:
    try:
        parts = urlsplit(dsn)
        found = parts.password or dict(parse_qsl(parts.query)).get("password")
    except ValueError:
        return None
    return found or None


def describe(exc: BaseException, dsn: str) -> str:
    """``ErrorClass: message`` with the DSN's password masked, should a message quote it."""
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    password = _password(dsn)
    return text.replace(password, MASK) if password else text


def _permanent(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return state[:2] in _PERMANENT_SQLSTATE_CLASSES
    # A malformed DSN (ClientConfigurationError is a ValueError) or another client-side
    # refusal: the same DSN fails the same way next time.
    return isinstance(exc, ValueError | asyncpg.InterfaceError)


async def wait_for_database(dsn: str, wait_s: float) -> None:
    """Return once a connection to ``dsn`` succeeds; raise DatabaseStartError otherwise."""
    deadline = time.monotonic() + max(0.0, wait_s)
    backoff = Backoff(RETRY_INITIAL_S, RETRY_CAP_S)
    target = redact_dsn(dsn)
    while True:
        left = deadline - time.monotonic()
        try:
            conn = await asyncpg.connect(dsn, timeout=max(1.0, min(ATTEMPT_TIMEOUT_S, left)))
        except Exception as exc:
            if _permanent(exc):
                raise DatabaseRefused(
                    f"PostgreSQL refused the connection: {describe(exc, dsn)} ({target})"
                ) from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnreachable(
                    f"PostgreSQL not reachable after {wait_s:g} s: {describe(exc, dsn)} ({target})"
                ) from None
            pause = min(backoff.next(), left)
            log.warning(
                "database_unreachable",
                error=type(exc).__name__,
                reason=describe(exc, dsn),
                dsn=target,
                attempt=backoff.attempts,
                retry_in_s=round(pause, 2),
                seconds_left=round(left, 1),
            )
            await asyncio.sleep(pause)
            continue
        await conn.close()
        if backoff.attempts:
            log.info("database_reachable", dsn=target, attempts=backoff.attempts + 1)
        return
