"""kmsd's own AWS identity (for the policy it should be given)."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from kmsd.aws.clients import aws_client
from kmsd.config import Settings
from kmsd.errors import UpstreamError


async def own_account(settings: Settings) -> tuple[str, str]:
    """Return (partition, account) of the credentials kmsd runs with."""
    try:
        async with aws_client("sts", settings) as sts:
            arn = str((await sts.get_caller_identity())["Arn"])
    except (ClientError, BotoCoreError) as exc:
        raise UpstreamError(f"could not ask STS who kmsd is: {type(exc).__name__}") from None
    parts = arn.split(":")
    return parts[1], parts[4]
