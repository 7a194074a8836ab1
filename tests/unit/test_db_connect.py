"""kmsd/db/connect.py, pure parts: the DSN in logs never shows a password; what is permanent."""

from __future__ import annotations

import asyncpg
import pytest

from kmsd.db.connect import _permanent, describe, redact_dsn


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://kmsd:hunter2@db:5432/kmsd", "postgresql://kmsd:***@db:5432/kmsd"),
        ("postgresql://kmsd@db/kmsd", "postgresql://kmsd@db/kmsd"),
        ("postgresql://postgres:@/x?host=/tmp/s", "postgresql://postgres:@/x?host=/tmp/s"),
        (
            "postgresql://kmsd@db/kmsd?password=hunter2&sslmode=require",
            "postgresql://kmsd@db/kmsd?password=***&sslmode=require",
        ),
        ("postgresql://a:b:c@db/x", "postgresql://a:***@db/x"),
        ("postgresql://kmsd:p%40ss@db/x", "postgresql://kmsd:***@db/x"),
    ],
)
def test_redact_dsn(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown


def test_describe_masks_a_password_an_error_quotes() -> None:
    exc = ValueError("invalid DSN postgresql://kmsd:hunter2@db:x/kmsd")
    assert describe(exc, "postgresql://kmsd:hunter2@db:x/kmsd") == (
        "ValueError: invalid DSN postgresql://kmsd:***@db:x/kmsd"
    )
    assert describe(TimeoutError(), "postgresql://db/x") == "TimeoutError"


@pytest.mark.parametrize(
    ("exc", "permanent"),
    [
        (ConnectionRefusedError(111, "refused"), False),
        (TimeoutError(), False),
        (OSError(-2, "Name or service not known"), False),
        (asyncpg.CannotConnectNowError("the database system is starting up"), False),
        (asyncpg.TooManyConnectionsError("too many clients"), False),
        (asyncpg.InvalidPasswordError("password authentication failed"), True),
        (asyncpg.InvalidAuthorizationSpecificationError("no pg_hba.conf entry"), True),
        (asyncpg.InvalidCatalogNameError('database "x" does not exist'), True),
        (asyncpg.ClientConfigurationError("invalid port"), True),
    ],
)
def test_what_waiting_cannot_fix(exc: BaseException, permanent: bool) -> None:
    assert _permanent(exc) is permanent
