"""Secrets Manager writes (through the guarded client of ``kmsd.aws.clients``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
)

from kmsd.aws.clients import aws_client
from kmsd.config import Settings
from kmsd.errors import Conflict, UpstreamError

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WriteResult:
    arn: str
    version_id: str


class SecretsWriter:
    """The SM operations kmsd performs: create, version, describe, tag, delete, restore."""

    def __init__(self, client: Any, recovery_window_days: int) -> None:
        self._sm = client
        self._recovery_days = recovery_window_days

    async def write(
        self,
        sm_name: str,
        version_id: str,
        value: str | bytes,
        *,
        create: bool,
        tags: Mapping[str, str],
        description: str = "",
        stages: list[str] | None = None,
    ) -> WriteResult:
        """Create the secret or add a version; ``version_id`` makes the call idempotent."""
        payload: dict[str, Any] = (
            {"SecretString": value} if isinstance(value, str) else {"SecretBinary": value}
        )
        try:
            if create:
                try:
                    resp = await self._sm.create_secret(
                        Name=sm_name,
                        ClientRequestToken=version_id,
                        Description=description,
                        Tags=_tag_list(tags),
                        **payload,
                    )
                    return WriteResult(resp["ARN"], resp["VersionId"])
                except ClientError as exc:
                    if _code(exc) not in ("ResourceExistsException", "InvalidRequestException"):
                        raise
                    # An SM secret with our deterministic name but no metadata: left by a
                    # deleted node (scheduled for deletion) or a write whose metadata was lost.
                    await self._adopt(sm_name, tags)
            if stages is not None:
                payload["VersionStages"] = stages  # e.g. AWSPENDING: AWSCURRENT stays put
            resp = await self._sm.put_secret_value(
                SecretId=sm_name, ClientRequestToken=version_id, **payload
            )
            return WriteResult(resp["ARN"], resp["VersionId"])
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            err = _upstream("write the secret", sm_name, exc)
            if status >= 500:
                raise _ambiguous(err) from None
            raise err from None
        except (EndpointConnectionError, ConnectTimeoutError):
            # Never connected: SM cannot have the value.
            raise UpstreamError(f"could not reach Secrets Manager to write {sm_name!r}") from None
        except BotoCoreError as exc:
            # Connected, then lost (read timeout, closed connection): SM may hold the version.
            raise _ambiguous(
                UpstreamError(
                    f"lost Secrets Manager while writing {sm_name!r}: {type(exc).__name__}"
                )
            ) from None

    async def _adopt(self, sm_name: str, tags: Mapping[str, str]) -> None:
        desc = await self._sm.describe_secret(SecretId=sm_name)
        found = {t["Key"]: t["Value"] for t in desc.get("Tags", [])}
        if found.get("kmsd:path") != tags.get("kmsd:path"):
            raise Conflict(
                f"an SM secret named {sm_name!r} exists and was not created by kmsd for this path"
            )
        if desc.get("DeletedDate") is not None:
            await self._sm.restore_secret(SecretId=sm_name)
        if any(found.get(k) != v for k, v in tags.items()):
            # Left by an older kmsd: hosts' prefix-shaped policies read the tags it lacks.
            await self._sm.tag_resource(SecretId=sm_name, Tags=_tag_list(tags))
        log.info("sm_secret_adopted", sm_name=sm_name)

    async def versions(self, sm_name: str) -> tuple[str, dict[str, list[str]]] | None:
        """The secret's ARN and every version it holds with its labels; None if there is none.

        Unlabelled (deprecated) versions are included with no labels: the reconciler needs to
        know that SM holds a version even when it serves nothing.
        """
        kwargs: dict[str, Any] = {"SecretId": sm_name, "IncludeDeprecated": True}
        out: dict[str, list[str]] = {}
        try:
            # Ask whether the secret exists first: moto 5.2.5 answers ListSecretVersionIds on
            # a missing secret with a 500 instead of ResourceNotFoundException.
            await self._sm.describe_secret(SecretId=sm_name)
            while True:
                page = await self._sm.list_secret_version_ids(**kwargs)
                for v in page.get("Versions", []):
                    out[v["VersionId"]] = list(v.get("VersionStages", []))
                if not page.get("NextToken"):
                    return str(page["ARN"]), out
                kwargs["NextToken"] = page["NextToken"]
        except ClientError as exc:
            if _code(exc) == "ResourceNotFoundException":
                return None
            raise _upstream("list versions of", sm_name, exc) from None
        except BotoCoreError as exc:
            raise UpstreamError(
                f"could not reach Secrets Manager to list {sm_name!r}: {type(exc).__name__}"
            ) from None

    async def ensure_tags(self, secret_id: str, tags: Mapping[str, str]) -> bool | None:
        """Add ``tags`` where SM lacks them; True if it did, False if there, None if no secret."""
        try:
            desc = await self._sm.describe_secret(SecretId=secret_id)
            found = {t["Key"]: t["Value"] for t in desc.get("Tags", [])}
            if all(found.get(k) == v for k, v in tags.items()):
                return False
            await self._sm.tag_resource(SecretId=secret_id, Tags=_tag_list(tags))
        except ClientError as exc:
            if _code(exc) == "ResourceNotFoundException":
                return None
            raise _upstream("tag", secret_id, exc) from None
        except BotoCoreError as exc:
            raise UpstreamError(
                f"could not reach Secrets Manager to tag {secret_id!r}: {type(exc).__name__}"
            ) from None
        return True

    async def labels(self, secret_id: str) -> dict[str, list[str]]:
        """Which staging labels each version carries (DescribeSecret's VersionIdsToStages)."""
        try:
            desc = await self._sm.describe_secret(SecretId=secret_id)
        except ClientError as exc:
            raise _upstream("describe", secret_id, exc) from None
        except BotoCoreError as exc:
            raise UpstreamError(
                f"could not reach Secrets Manager to describe {secret_id!r}: {type(exc).__name__}"
            ) from None
        return {k: list(v) for k, v in desc.get("VersionIdsToStages", {}).items()}

    async def move_label(
        self, secret_id: str, label: str, *, to: str | None, away_from: str | None
    ) -> None:
        """Put ``label`` on version ``to`` (taking it off ``away_from``), or only take it off."""
        kwargs: dict[str, Any] = {"SecretId": secret_id, "VersionStage": label}
        if to is not None:
            kwargs["MoveToVersionId"] = to
        if away_from is not None:
            kwargs["RemoveFromVersionId"] = away_from
        try:
            await self._sm.update_secret_version_stage(**kwargs)
        except ClientError as exc:
            raise _upstream(f"move the {label} label of", secret_id, exc) from None
        except BotoCoreError as exc:
            raise UpstreamError(
                f"could not reach Secrets Manager to label {secret_id!r}: {type(exc).__name__}"
            ) from None

    async def delete(self, sm_name: str) -> None:
        """Schedule deletion (recoverable for the configured window); absent is fine."""
        try:
            await self._sm.delete_secret(SecretId=sm_name, RecoveryWindowInDays=self._recovery_days)
        except ClientError as exc:
            code = _code(exc)
            if code == "ResourceNotFoundException":
                return
            if code == "InvalidRequestException" and "deletion" in str(exc).lower():
                return  # already scheduled
            raise _upstream("delete", sm_name, exc) from None
        except BotoCoreError as exc:
            raise UpstreamError(
                f"could not reach Secrets Manager to delete {sm_name!r}: {type(exc).__name__}"
            ) from None


def _ambiguous(err: UpstreamError) -> UpstreamError:
    """Mark a failure after which SM may or may not hold the version (the outbox decides)."""
    err.extra["ambiguous"] = True
    err.detail += "; SM may still have recorded it, kmsd will reconcile within minutes"
    return err


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _upstream(what: str, sm_name: str, exc: ClientError) -> UpstreamError:
    # The AWS error code is safe to show; the message is not echoed in case a service ever
    # quotes request content back.
    return UpstreamError(
        f"Secrets Manager refused to {what} {sm_name!r} ({_code(exc)})", aws_error=_code(exc)
    )


@asynccontextmanager
async def secrets_writer(settings: Settings) -> AsyncIterator[SecretsWriter]:
    """kmsd's SM writer, on a guarded client, for the app's lifetime."""
    async with aws_client("secretsmanager", settings) as client:
        yield SecretsWriter(client, settings.sm_recovery_window_days)
