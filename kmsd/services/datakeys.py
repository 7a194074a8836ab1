"""KMS data keys: ciphertext blobs from ``GenerateDataKeyWithoutPlaintext``, one per period.

kmsd asks KMS for a new 256-bit data key encrypted under the secret's CMK and bound to an
encryption context (``kmsd:path``, ``kmsd:name``); it never sees the plaintext key. The blob is
not a secret (only a principal allowed to ``kms:Decrypt`` with that context can open it), so it
lives in PostgreSQL as a version. Each period a new version becomes current; the older ones stay
listed, newest first, so old data can still be decrypted.

There is no outbox: the KMS call leaves nothing behind in AWS, so a failure on either side just
means no new version.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from kmsd.db import store
from kmsd.db.changes import record_secret_change
from kmsd.domain.names import NodePath
from kmsd.domain.tree import datakey_context
from kmsd.errors import Conflict, InvalidInput, UpstreamError

# KMS errors that say the key the caller named cannot serve (a 400), not that KMS failed.
_CALLERS_KEY = frozenset(
    {
        "NotFoundException",
        "InvalidKeyUsageException",
        "DisabledException",
        "KMSInvalidStateException",
        "ValidationException",
    }
)

log = structlog.get_logger(__name__)

DEFAULT_PERIOD_DAYS = 182  # about half a year, the rotation period the security team asked for
UPSERT = """
INSERT INTO secrets (node_id, name, kind, sm_name, sm_arn, created_by, expires_at, cmk_arn,
                     period_days)
VALUES ($1, $2, 'datakey', $3, '', $4, $5, $6, $7)
ON CONFLICT (node_id, name) DO UPDATE
SET expires_at = EXCLUDED.expires_at, period_days = EXCLUDED.period_days, updated_at = now()
RETURNING id
"""
# Older data keys are kept for decryption; only the newest is current.
RETIRE_CURRENT = (
    "UPDATE secret_versions SET stage = 'deprecated' WHERE secret_id = $1 AND stage = 'current'"
)
INSERT_VERSION = """
INSERT INTO secret_versions (secret_id, version_id, stage, created_by, ciphertext)
VALUES ($1, $2, 'current', $3, $4)
"""


async def new_data_key(
    pool: asyncpg.Pool,
    kms: Any,
    path: NodePath,
    name: str,
    *,
    cmk: str,
    period_days: int,
    created_by: str,
    now: datetime,
) -> dict[str, Any]:
    """Create the data key secret, or add its next version; return the metadata."""
    if not 1 <= period_days <= 3650:
        raise InvalidInput("period_days must be between 1 and 3650")
    async with pool.acquire() as conn:
        node = await store.get_node(conn, path)
        if node["depth"] < 2:
            raise InvalidInput(f"{str(path)!r} is a namespace; data keys attach to applications")
        existing = await store.get_secret(conn, node["id"], name)
    if existing is not None and existing["kind"] != "datakey":
        raise Conflict(f"secret {name!r} at {str(path)!r} is a {existing['kind']} secret")
    try:
        answer = await kms.generate_data_key_without_plaintext(
            KeyId=cmk, KeySpec="AES_256", EncryptionContext=datakey_context(str(path), name)
        )
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
        if code in _CALLERS_KEY:
            # The key named is the caller's mistake (unknown, malformed, disabled), not AWS's.
            raise InvalidInput(
                f"KMS cannot make a data key under {cmk!r} ({code}): name an enabled "
                "symmetric key (id, ARN or alias/...)",
                aws_error=code,
            ) from None
        raise UpstreamError(
            f"KMS refused a data key under {cmk!r} ({code})", aws_error=code
        ) from None
    except BotoCoreError as exc:
        raise UpstreamError(f"could not reach KMS: {type(exc).__name__}") from None
    key_arn = str(answer["KeyId"])
    version_id = str(uuid.uuid4())
    async with pool.acquire() as conn, conn.transaction():
        node = await store.get_node(conn, path, for_update=True)
        current = await store.get_secret(conn, node["id"], name)
        if current is not None and current["cmk_arn"] != key_arn:
            raise Conflict(
                f"data key {name!r} is under {current['cmk_arn']}; a new CMK needs a new name"
            )
        secret_id = await conn.fetchval(
            UPSERT,
            node["id"],
            name,
            f"datakey:{path}/{name}",
            created_by,
            now + timedelta(days=period_days),
            key_arn,
            period_days,
        )
        await conn.execute(RETIRE_CURRENT, secret_id)
        await conn.execute(
            INSERT_VERSION, secret_id, version_id, created_by, answer["CiphertextBlob"]
        )
        await record_secret_change(conn, str(path), node["id"], secret_id)
    log.info("data_key_added", path=str(path), name=name, version_id=version_id, cmk=key_arn)
    return {
        "path": str(path),
        "name": name,
        "kind": "datakey",
        "cmk_arn": key_arn,
        "version_id": version_id,
        "period_days": period_days,
        "created": existing is None,
    }
