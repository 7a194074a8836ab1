"""The one place kmsd builds AWS clients: each one guarded by an allowlist of operations.

kmsd must never hold a secret value. Every client made here refuses, before anything is
signed or sent, any operation that is not on ``ALLOWED_OPERATIONS``: the write, label,
describe and delete calls kmsd needs, data keys *without* plaintext, and ``GetCallerIdentity``.
Reading a secret value, decrypting, or making a data key with its plaintext is therefore
impossible from kmsd even by mistake, whatever its IAM policy says. A unit test scans the code
for any other place that creates an AWS client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

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
    "kms": frozenset({"GenerateDataKeyWithoutPlaintext", "DescribeKey"}),
    "sts": frozenset({"GetCallerIdentity"}),
}

# One retry layer (botocore's), explicit: a few quick attempts, then the caller sees a 502.
AWS_CONFIG = AioConfig(
    retries={"max_attempts": 3, "mode": "standard"},
    connect_timeout=5,
    read_timeout=15,
)


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
        service, region_name=settings.aws_region, endpoint_url=endpoint, config=AWS_CONFIG
    ) as client:
        guard(client)
        yield client
