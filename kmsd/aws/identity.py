"""kmsd's own AWS identity (for the policy it should be given)."""

from __future__ import annotations

from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from kmsd.aws.sm import AWS_CONFIG
from kmsd.config import Settings
from kmsd.errors import UpstreamError


async def own_account(settings: Settings) -> tuple[str, str]:
    """Return (partition, account) of the credentials kmsd runs with."""
    session = get_session()
    try:
        async with session.create_client(
            "sts",
            region_name=settings.aws_region,
            endpoint_url=settings.sts_endpoint,
            config=AWS_CONFIG,
        ) as sts:
            arn = str((await sts.get_caller_identity())["Arn"])
    except (ClientError, BotoCoreError) as exc:
        raise UpstreamError(f"could not ask STS who kmsd is: {type(exc).__name__}") from None
    parts = arn.split(":")
    return parts[1], parts[4]
