"""kmsctl outbox against a real kmsd: on-call sees a quarantined write and decides about it."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest

from kmsd.services.reconcile import QUARANTINE_AFTER
from tests.conftest import Identity
from tests.e2e.harness import DEADLINE_S, Ops, Replica, kmsctl

pytestmark = pytest.mark.e2e


async def _quarantine(dsn: str, sm_name: str) -> int:
    """A put in doubt that failed every reconcile pass (as a broken intent would)."""
    conn = await asyncpg.connect(dsn)
    try:
        row_id: int = await conn.fetchval(
            "INSERT INTO sm_outbox (op, sm_name, version_id, intent, attempts, last_error)"
            " VALUES ('put', $1, $2, $3::jsonb, $4, 'DataError') RETURNING id",
            sm_name,
            str(uuid.uuid4()),
            json.dumps({"path": "prod/pay", "name": "db"}),
            QUARANTINE_AFTER,
        )
        return row_id
    finally:
        await conn.close()


def test_kmsctl_outbox_lists_and_discards_a_quarantined_write(
    kmsd: Replica, env: dict[str, str], admin: Identity, moto_endpoint: str
) -> None:
    ops = Ops(kmsd, admin, moto_endpoint)
    ops("node", "create", "prod/pay", "--parents")
    ops.put("prod/pay", "db", {"v": 1})
    assert ops("outbox", "list").strip() == "no write in doubt"
    row_id = asyncio.run(_quarantine(env["KMSD_DATABASE_URL"], "kmsd/prod/pay/db"))

    text = ops("outbox", "list", "--quarantined")
    (line,) = [ln for ln in text.splitlines() if ln.startswith(str(row_id))]
    assert line.split()[1:3] == ["put", "prod/pay/db"]
    assert line.split()[-3:] == [str(QUARANTINE_AFTER), "DataError", "quarantined"]
    assert "kmsctl outbox discard ID" in text  # what on-call can do about it
    (listed,) = ops.json("outbox", "list")["writes"]
    assert (listed["id"], listed["quarantined"]) == (row_id, True)

    assert "never becomes current" in ops("outbox", "discard", str(row_id))
    assert ops.json("outbox", "list")["writes"] == []
    # Discarding it again: one line on stderr, a non-zero exit, no traceback.
    proc = kmsctl(kmsd.addr, admin, moto_endpoint, "outbox", "discard", str(row_id))
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert "no write in doubt" in err
