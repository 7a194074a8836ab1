"""The one place kmsd builds AWS clients: each one guarded by an allowlist of operations.

kmsd must never hold a secret value. Every client made here refuses, before anything is
signed or sent, any operation that is not on ``ALLOWED_OPERATIONS``: the write, label,
describe and delete calls kmsd needs, data keys *without* plaintext, ``GenerateMac`` (webhook
signing keys are derived with it, see ``kmsd.services.webhook_keys``) and ``GetCallerIdentity``.
Reading a secret value, decrypting, or making a data key with its plaintext is therefore
impossible from kmsd even by mistake, whatever its IAM policy says. A unit test scans the code
for any other place that creates an AWS client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ReadTimeoutError

from kmsd.config import Settings

ALLOWED_OPERATIONS: dict[str, frozenset[str]] = {
    "secretsmanager": frozenset(
        {
            "CreateSecret",
            "PutSecretValue",
            "UpdateSecretVersionStage",
            "DescribeSecret",
            "ListSecretVersionIds",
            "TagResource",
            "UntagResource",
            "DeleteSecret",
            "RestoreSecret",
        }
    ),
    "kms": frozenset({"GenerateDataKeyWithoutPlaintext", "DescribeKey", "GenerateMac"}),
    "sts": frozenset({"GetCallerIdentity"}),
}

# One retry layer (botocore's), explicit: a few quick attempts, then the caller sees a 502.
MAX_ATTEMPTS = 3


def aws_config(settings: Settings) -> AioConfig:
    """botocore's own bounds: each attempt's connect and read timeouts, and its retries."""
    return AioConfig(
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        connect_timeout=settings.aws_connect_timeout_s,
        read_timeout=settings.aws_read_timeout_s,
    )


class BoundedClient:
    """``client`` with every operation cut off after ``timeout`` seconds, retries included.

    botocore bounds each attempt, not the sum of attempts and back-offs: three read timeouts
    of 10 s would keep a write waiting 30 s and more. A call that runs out raises botocore's
    ``ReadTimeoutError``, which callers already treat as "connected, then lost" (for a write:
    SM may hold the version, so the outbox decides).
    """

    def __init__(self, client: Any, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._operations = frozenset(client.meta.method_to_api_mapping)

    @property
    def meta(self) -> Any:
        return self._client.meta

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in self._operations:
            return attr
        return self._bounded(attr)

    def _bounded(self, call: Callable[..., Any]) -> Callable[..., Any]:
        async def run(**kwargs: Any) -> Any:
            try:
                async with asyncio.timeout(self._timeout):
                    return await call(**kwargs)
            except TimeoutError:
                raise ReadTimeoutError(endpoint_url=self._client.meta.endpoint_url) from None

        return run


class ForbiddenOperation(RuntimeError):
    """A code path tried an AWS operation kmsd must never perform."""


def guard(client: Any) -> None:
    """Refuse every operation of ``client`` outside ALLOWED_OPERATIONS (before signing)."""
    model = client.meta.service_model
    allowed = ALLOWED_OPERATIONS.get(model.service_name, frozenset())

    def check(model: Any, **_: Any) -> None:
        if model.name not in allowed:
            raise ForbiddenOperation(
                f"kmsd never calls {model.name}: it writes secrets and holds no values"
            )

    client.meta.events.register(f"before-call.{model.service_id.hyphenize()}", check)


@asynccontextmanager
async def aws_client(service: str, settings: Settings) -> AsyncIterator[Any]:
    """A guarded client for ``service`` with kmsd's own (ambient) credentials."""
    if service not in ALLOWED_OPERATIONS:
        raise ForbiddenOperation(f"kmsd has no business with AWS {service}")
    endpoint = settings.sts_endpoint if service == "sts" else settings.aws_endpoint_url
    async with get_session().create_client(
        service, region_name=settings.aws_region, endpoint_url=endpoint, config=aws_config(settings)
    ) as client:
        guard(client)
        yield BoundedClient(client, settings.aws_call_timeout_s)
