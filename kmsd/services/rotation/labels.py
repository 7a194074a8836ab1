"""SM's staging labels after a rotation transition: moved to the stages just recorded.

A transition commits its stages first and flags the rotation ``labels_pending``; the labels
follow right after (``kmsd.services.labels.converge``), and the driver finishes any that a
crash or an SM failure left behind.
"""

from __future__ import annotations

import asyncpg
import structlog

from kmsd.aws.sm import SecretsWriter
from kmsd.db import hold
from kmsd.db import rotations as rotations_db
from kmsd.errors import KmsError, NotFound
from kmsd.services import labels, writes

log = structlog.get_logger(__name__)

_LABELS_DONE = "UPDATE rotations SET labels_pending = false WHERE id = $1"


class RotationLabels:
    def __init__(self, pool: asyncpg.Pool, sm: SecretsWriter) -> None:
        self.pool = pool
        self.sm = sm

    async def sync(self, rotation_id: int) -> bool:
        """Bring SM's staging labels in line with the recorded stages; True when they are."""
        row = await self.pool.fetchrow(rotations_db.BY_ID, rotation_id)
        if row is None:
            raise NotFound(f"rotation {rotation_id} does not exist")
        async with hold(self.pool) as conn:
            # Serialised with writes and transitions of the same secret (one advisory lock key):
            # no transition can commit between reading the stages and clearing labels_pending.
            await conn.execute(writes.LOCK, row["sm_name"])
            try:
                stages = {
                    r["version_id"]: r["stage"]
                    for r in await conn.fetch(rotations_db.VERSIONS, row["secret_id"])
                }
                if await labels.converge(self.sm, row["sm_arn"], stages) is None:
                    log.error("rotation_labels_not_converging", rotation_id=rotation_id)
                    return False
                await conn.execute(_LABELS_DONE, rotation_id)
                return True
            except KmsError as exc:
                log.warning("rotation_labels_deferred", rotation_id=rotation_id, error=exc.detail)
                return False
            finally:
                await writes.unlock(conn, row["sm_name"])
