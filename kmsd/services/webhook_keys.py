"""Webhook signing keys: derived with KMS GenerateMac whenever they are needed, never stored.

Theory of operation
-------------------
A receiver verifies ``X-Kmsd-Signature`` with a key kmsd showed once, when the hook was set; kmsd
must sign every later delivery with the same key, yet a dump of its database must not be
enough to sign (a stored key would let anyone holding the dump forge events).

So the key is a function of something kept outside the database. ``KMSD_WEBHOOK_MAC_KEY`` names
a KMS HMAC key (KeySpec HMAC_256, KeyUsage GENERATE_VERIFY_MAC) whose material never leaves
KMS. Setting a hook picks a random salt and asks KMS for

    GenerateMac(KeyId, HMAC_SHA_256, "kmsd webhook signing key v1" NUL app_path NUL salt)

and the 32-byte MAC, base64url without padding, *is* the signing key: shown once, exactly as
the random keys of older versions were, and used the same way (HMAC-SHA256 keyed with the
key's UTF-8 text), so receivers change nothing. The row keeps the salt and the id of the KMS
key that answered; a delivery asks KMS again with them. The fixed prefix separates these MACs
from any other use of the KMS key, and the application's path binds a salt to its hook:
a salt copied onto another application's row derives a different key.

GenerateMac is deterministic for one key, so the leader keeps the keys it derived in a small
LRU (``CACHE_SIZE``, keyed by key id, application and salt) instead of calling KMS for every
delivery; a hook set again has a new salt, so its old entry is simply never asked for again.
The derived keys therefore live in the leader's memory (as the stored keys did in the
database's): only what KMS answered, for hooks that had deliveries, at most ``CACHE_SIZE``.
"""

from __future__ import annotations

import base64
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from kmsd.errors import UpstreamError, WebhooksNotConfigured

DOMAIN = b"kmsd webhook signing key v1"
MAC_ALGORITHM = "HMAC_SHA_256"
SALT_BYTES = 32
# Enough for every hook of a large estate; each entry is ~200 bytes.
CACHE_SIZE = 1024
SETTING = "KMSD_WEBHOOK_MAC_KEY"


def mac_message(app_path: str, salt: bytes) -> bytes:
    """The message whose MAC is the signing key of ``app_path``'s hook with ``salt``."""
    # NUL separates the parts: a path never holds one (check_segment refuses control chars).
    return DOMAIN + b"\x00" + app_path.encode() + b"\x00" + salt


def key_text(mac: bytes) -> str:
    """The signing key as shown and as used: the MAC in base64url, unpadded (43 characters)."""
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class NewKey:
    """A hook's new signing key (shown once), with what the row keeps to derive it again."""

    key: str
    key_id: str
    salt: bytes

    def __repr__(self) -> str:  # never print the key
        return f"NewKey(key_id={self.key_id!r}, salt=<{len(self.salt)} bytes>)"


class WebhookKeys:
    """Derive hooks' signing keys with KMS (``kms``: kmsd's guarded client)."""

    def __init__(self, kms: Any, key_id: str | None, *, cache_size: int = CACHE_SIZE) -> None:
        self._kms = kms
        self._key_id = key_id
        self._cache: OrderedDict[tuple[str, str, bytes], str] = OrderedDict()
        self._cache_size = cache_size
        self.kms_calls = 0  # for tests and curiosity: how often KMS was asked

    async def create(self, app_path: str) -> NewKey:
        """A fresh salt and the key it derives for ``app_path``, with the configured KMS key."""
        if self._key_id is None:
            raise WebhooksNotConfigured(
                f"webhooks need {SETTING}: the id, ARN or alias of a KMS key with KeySpec "
                "HMAC_256 and KeyUsage GENERATE_VERIFY_MAC that kmsd may call GenerateMac with "
                "(webhook signing keys are derived with it and never stored)",
                setting=SETTING,
            )
        salt = secrets.token_bytes(SALT_BYTES)
        key, used = await self._generate(self._key_id, app_path, salt)
        return NewKey(key=key, key_id=used, salt=salt)

    async def derive(self, key_id: str, app_path: str, salt: bytes) -> str:
        """The signing key of a hook row (its KMS key id and salt): cached, else from KMS."""
        slot = (key_id, app_path, salt)
        found = self._cache.get(slot)
        if found is not None:
            self._cache.move_to_end(slot)
            return found
        key, _ = await self._generate(key_id, app_path, salt)
        self._cache[slot] = key
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return key

    async def key_arn(self) -> str | None:
        """The ARN of the configured KMS key (an alias or id resolved), None if there is none."""
        if self._key_id is None:
            return None
        try:
            answer = await self._kms.describe_key(KeyId=self._key_id)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
            raise UpstreamError(
                f"KMS cannot describe {SETTING}={self._key_id!r} ({code})", aws_error=code
            ) from None
        except BotoCoreError as exc:
            raise UpstreamError(f"could not reach KMS: {type(exc).__name__}") from None
        return str(answer["KeyMetadata"]["Arn"])

    async def _generate(self, key_id: str, app_path: str, salt: bytes) -> tuple[str, str]:
        self.kms_calls += 1
        try:
            answer = await self._kms.generate_mac(
                KeyId=key_id, Message=mac_message(app_path, salt), MacAlgorithm=MAC_ALGORITHM
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
            raise UpstreamError(
                f"KMS refused GenerateMac with {key_id!r} ({code}): webhook keys need an "
                "enabled KMS key with KeySpec HMAC_256 and KeyUsage GENERATE_VERIFY_MAC, and "
                "kms:GenerateMac on it",
                aws_error=code,
            ) from None
        except BotoCoreError as exc:
            raise UpstreamError(f"could not reach KMS: {type(exc).__name__}") from None
        mac = bytes(answer["Mac"])
        if len(mac) != 32:
            raise UpstreamError(f"KMS key {key_id!r} is not HMAC_256 (a {len(mac)}-byte MAC)")
        return key_text(mac), str(answer.get("KeyId") or key_id)
