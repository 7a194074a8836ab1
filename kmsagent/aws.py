"""Reading values straight from AWS with the host's own credentials.

Secrets Manager: ``GetSecretValue`` by version id *and* staging label (the hosts' IAM policy
conditions on ``secretsmanager:VersionStage``; without the label the read is denied).
KMS: ``Decrypt`` of a data key's ciphertext with the encryption context kmsd bound it to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from contextlib import AsyncExitStack
from typing import Any

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import BotoCoreError, ClientError

from kmsagent.state import Fetch, Plain, ValueKey

log = structlog.get_logger(__name__)

CONCURRENCY = 16
CLIENT_CONFIG = AioConfig(
    connect_timeout=5,
    read_timeout=10,
    retries={"max_attempts": 3, "mode": "standard"},
    max_pool_connections=CONCURRENCY,
)


class FetchFailed(Exception):
    """A value could not be read; names the secret and the AWS error, never a value."""


class Reader:
    """SM and KMS clients for one agent, opened once."""

    def __init__(self, session: AioSession, region: str) -> None:
        self._session = session
        self._region = region
        self._stack = AsyncExitStack()
        self._sm: Any = None
        self._kms: Any = None
        self._limit = asyncio.Semaphore(CONCURRENCY)
        self._kms_lock = asyncio.Lock()
        self.calls = 0

    async def __aenter__(self) -> Reader:
        self._sm = await self._stack.enter_async_context(
            self._session.create_client(
                "secretsmanager", region_name=self._region, config=CLIENT_CONFIG
            )
        )
        return self

    async def _kms_client(self) -> Any:
        """KMS on first use: most applications have no data keys (and its model costs 3 MiB)."""
        async with self._kms_lock:
            if self._kms is None:
                self._kms = await self._stack.enter_async_context(
                    self._session.create_client(
                        "kms", region_name=self._region, config=CLIENT_CONFIG
                    )
                )
        return self._kms

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def read(self, fetch: Fetch) -> Plain:
        async with self._limit:
            self.calls += 1
            try:
                if fetch.service == "kms":
                    kms = await self._kms_client()
                    answer = await kms.decrypt(
                        CiphertextBlob=fetch.ciphertext,
                        KeyId=fetch.cmk_arn,
                        EncryptionContext=dict(fetch.context),
                    )
                    plaintext: bytes = answer["Plaintext"]
                    return plaintext
                answer = await self._sm.get_secret_value(
                    SecretId=fetch.sm_arn, VersionId=fetch.version_id, VersionStage=fetch.label
                )
            except ClientError as exc:
                err = exc.response.get("Error", {})
                raise FetchFailed(
                    f"{fetch.service} refused {fetch.secret!r} version {fetch.version_id} "
                    f"({fetch.stage}): {err.get('Code', 'error')}"
                ) from None
            except (BotoCoreError, OSError, TimeoutError) as exc:
                raise FetchFailed(
                    f"cannot read {fetch.secret!r} from {fetch.service}: {type(exc).__name__}"
                ) from None
        if "SecretString" in answer:
            text: str = answer["SecretString"]
            return text
        binary: bytes = answer["SecretBinary"]
        return binary

    async def read_all(
        self, wanted: Iterable[Fetch]
    ) -> tuple[dict[ValueKey, Plain], list[FetchFailed]]:
        """Read every value concurrently: what arrived, and what failed."""
        wanted = list(wanted)
        results = await asyncio.gather(*(self.read(f) for f in wanted), return_exceptions=True)
        values: dict[ValueKey, Plain] = {}
        failures: list[FetchFailed] = []
        for fetch, result in zip(wanted, results, strict=True):
            if isinstance(result, FetchFailed):
                failures.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                values[fetch.key] = result
        return values, failures
