"""The first key: AWS credentials from the host, never from the agent's configuration.

Modes (``--credentials``):

- ``auto``: aiobotocore's provider chain (environment, profiles, web identity, containers,
  IMDS), as any AWS SDK would find them.
- ``imds``: EC2 instance metadata, IMDSv2 only (a session token first; v1 is refused), endpoint
  from ``AWS_EC2_METADATA_SERVICE_ENDPOINT``. Refreshed before they expire by aiobotocore.
- ``file``: a shared credentials file such as the one the SSM agent keeps fresh on hybrid
  (non-EC2) machines, re-read whenever it changes; a file readable by others is warned about.
- ``web-identity``: a Kubernetes service-account token file exchanged for role credentials with
  ``sts:AssumeRoleWithWebIdentity`` (the call is unsigned: the token is the proof), refreshed
  before they expire, re-reading the token file each time (the kubelet rotates it).

Each mode yields a botocore credentials object; ``credentials_session`` wires it into an
aiobotocore session so every client signs with it.
"""

from __future__ import annotations

import configparser
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiobotocore.credentials import (
    AioAssumeRoleWithWebIdentityCredentialFetcher,
    AioCredentialResolver,
    AioCredentials,
    AioDeferredRefreshableCredentials,
    AioInstanceMetadataProvider,
)
from aiobotocore.session import AioSession
from aiobotocore.utils import AioInstanceMetadataFetcher
from botocore.credentials import ReadOnlyCredentials
from botocore.utils import FileWebIdentityTokenLoader

log = structlog.get_logger(__name__)

MODES = ("auto", "imds", "file", "web-identity")
DEFAULT_CREDENTIALS_FILE = "/root/.aws/credentials"
IMDS_TIMEOUT_S = 2.0


class CredentialsError(Exception):
    """The host offers no usable credentials in the chosen mode (the message says why)."""


@dataclass(frozen=True, slots=True)
class CredentialsConfig:
    mode: str = "auto"
    file: str = DEFAULT_CREDENTIALS_FILE
    profile: str = "default"
    token_file: str | None = None
    role_arn: str | None = None
    session_name: str | None = None


class FileCredentials(AioCredentials):  # type: ignore[misc]
    """Credentials from a shared credentials file, re-read whenever the file changes.

    The SSM agent rotates the keys in that file every so often; a stat per signature (a
    microsecond) notices a new file by inode, size and mtime, so a rotation is picked up at
    the next request rather than at a restart.
    """

    METHOD = "kmsagent-file"

    def __init__(self, path: str, profile: str) -> None:
        super().__init__("", "", None, method=self.METHOD)
        self._path = path
        self._profile = profile
        self._seen: tuple[int, int, int] | None = None
        self.reloads = 0
        self._load()

    def _load(self) -> None:
        try:
            st = os.stat(self._path)
        except OSError as exc:
            raise CredentialsError(f"cannot read credentials file {self._path}: {exc}") from None
        mark = (st.st_ino, st.st_size, st.st_mtime_ns)
        if mark == self._seen:
            return
        if stat.S_IMODE(st.st_mode) & 0o077:
            log.warning(
                "credentials_file_too_open",
                path=self._path,
                mode=oct(stat.S_IMODE(st.st_mode)),
                hint="chmod 600: other users of this host can read the keys",
            )
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(Path(self._path).read_text())
            section = parser[self._profile]
            access_key = section["aws_access_key_id"].strip()
            secret_key = section["aws_secret_access_key"].strip()
        except (OSError, configparser.Error, KeyError):
            # Never echo the file: it holds a secret key.
            raise CredentialsError(
                f"{self._path}: profile [{self._profile}] with aws_access_key_id and "
                "aws_secret_access_key expected"
            ) from None
        token = section.get("aws_session_token") or None
        self.access_key, self.secret_key, self.token = access_key, secret_key, token
        if self._seen is not None:
            log.info("credentials_file_reloaded", path=self._path)
        self._seen = mark
        self.reloads += 1

    async def get_frozen_credentials(self) -> ReadOnlyCredentials:
        try:
            self._load()
        except CredentialsError as exc:
            # A half-written file during the SSM agent's rotation: keep the last good keys.
            if self._seen is None:
                raise
            log.warning("credentials_file_unreadable", error=str(exc))
        return ReadOnlyCredentials(self.access_key, self.secret_key, self.token, None)


class _Fixed:
    """A credential provider that hands out one prepared credentials object."""

    METHOD = "kmsagent"

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials

    async def load(self) -> Any:
        return self._credentials


def credentials_session(config: CredentialsConfig) -> AioSession:
    """An aiobotocore session whose clients sign with the host credentials of ``config``."""
    session = AioSession()
    if config.mode == "auto":
        return session
    if config.mode == "file":
        creds: Any = FileCredentials(config.file, config.profile)
    elif config.mode == "imds":
        fetcher = AioInstanceMetadataFetcher(
            timeout=IMDS_TIMEOUT_S,
            num_attempts=3,
            config={
                "ec2_metadata_service_endpoint": os.environ.get(
                    "AWS_EC2_METADATA_SERVICE_ENDPOINT"
                ),
                "ec2_metadata_v1_disabled": True,
            },
        )
        creds = AioInstanceMetadataProvider(iam_role_fetcher=fetcher)
    elif config.mode == "web-identity":
        if not config.token_file or not config.role_arn:
            raise CredentialsError(
                "web-identity needs a token file and a role ARN "
                "(--web-identity-token-file/--role-arn or AWS_WEB_IDENTITY_TOKEN_FILE/AWS_ROLE_ARN)"
            )
        web_fetcher = AioAssumeRoleWithWebIdentityCredentialFetcher(
            client_creator=session.create_client,
            web_identity_token_loader=FileWebIdentityTokenLoader(config.token_file),
            role_arn=config.role_arn,
            extra_args={"RoleSessionName": config.session_name or "kmsagent"},
        )
        creds = AioDeferredRefreshableCredentials(
            method="kmsagent-web-identity", refresh_using=web_fetcher.fetch_credentials
        )
    else:
        raise CredentialsError(f"unknown credentials mode {config.mode!r}; one of {MODES}")
    provider = creds if config.mode == "imds" else _Fixed(creds)
    session.register_component("credential_provider", AioCredentialResolver([provider]))
    return session


async def frozen(session: AioSession) -> ReadOnlyCredentials:
    """The session's credentials now (refreshed first if they near expiry)."""
    creds = await session.get_credentials()
    if creds is None:
        raise CredentialsError(
            "no AWS credentials on this host (instance role, credentials file, web identity?)"
        )
    frozen_creds: ReadOnlyCredentials = await creds.get_frozen_credentials()
    return frozen_creds
