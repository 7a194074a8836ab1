"""Least-privilege IAM policies (pure): for an application's hosts, and for kmsd itself.

Hosts read values straight from AWS, so their policy is where "who may read this secret" is
finally enforced. It allows reading a value (``HOST_READ_OPS``) on exactly the secrets in the
application's effective sets, only for the staging labels it may use (the agent passes the
stage with the version id, so the ``secretsmanager:VersionStage`` key is present), only from
the given networks, and ``kms:Decrypt`` on its CMKs with the encryption context kmsd uses.

kmsd's own policy is the mirror image: it may create, version, label, describe, tag and delete
secrets under its prefix and make KMS data keys *without* plaintext - and nothing that reads a
value (``FORBIDDEN_ACTIONS``). With webhooks configured it may also ``kms:GenerateMac`` with the
one HMAC key webhook signing keys are derived from (never with every key: an application's own
HMAC keys must not be usable by kmsd).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

VERSION = "2012-10-17"
# SM staging labels per kmsd stage; revoked versions carry a label nobody is allowed to read.
STAGE_LABELS = {"current": "AWSCURRENT", "pending": "AWSPENDING", "previous": "AWSPREVIOUS"}
OWNER_LABELS = ("AWSCURRENT", "AWSPENDING", "AWSPREVIOUS")
# What an application's hosts (never kmsd) do with their own credentials.
HOST_READ_OPS = ("secretsmanager:GetSecretValue",)
SERVER_SM_ACTIONS = (
    "secretsmanager:CreateSecret",
    "secretsmanager:PutSecretValue",
    "secretsmanager:UpdateSecretVersionStage",
    "secretsmanager:DescribeSecret",
    "secretsmanager:ListSecretVersionIds",
    "secretsmanager:TagResource",
    "secretsmanager:DeleteSecret",
    "secretsmanager:RestoreSecret",
)
SERVER_KMS_ACTIONS = ("kms:GenerateDataKeyWithoutPlaintext", "kms:DescribeKey")
# Webhook signing keys are MACs of the webhook key (kmsd.services.webhook_keys).
WEBHOOK_MAC_ACTION = "kms:GenerateMac"
FORBIDDEN_ACTIONS = frozenset(
    {
        "secretsmanager:GetSecretValue",  # never granted to kmsd
        "secretsmanager:BatchGetSecretValue",  # never granted to kmsd
        "secretsmanager:*",
        "kms:Decrypt",
        "kms:GenerateDataKey",
        "kms:GenerateDataKeyPair",
        "kms:ReEncryptFrom",
        "kms:*",
        "*",
    }
)


@dataclass(frozen=True, slots=True)
class KeyUse:
    """A CMK an application decrypts with, and the encryption context kmsd binds to it."""

    key_arn: str
    context: tuple[tuple[str, str], ...] = ()


def app_policy(
    secret_arns: Iterable[str],
    *,
    labels: Sequence[str] = OWNER_LABELS,
    source_cidrs: Sequence[str] = (),
    keys: Sequence[KeyUse] = (),
    shared_arns: Iterable[str] = (),
) -> dict[str, Any]:
    """The policy an application's hosts need, and nothing more."""
    network: dict[str, Any] = (
        {"IpAddress": {"aws:SourceIp": list(source_cidrs)}} if source_cidrs else {}
    )
    statements: list[dict[str, Any]] = []
    arns = sorted(set(secret_arns))
    if arns:
        statements.append(
            {
                "Sid": "ReadOwnSecretsByStage",
                "Effect": "Allow",
                "Action": list(HOST_READ_OPS),
                "Resource": arns,
                "Condition": {
                    "ForAnyValue:StringEquals": {"secretsmanager:VersionStage": list(labels)},
                    **network,
                },
            }
        )
    shared = sorted(set(shared_arns) - set(arns))
    if shared:
        # Secrets other applications share with this one: the current version only.
        statements.append(
            {
                "Sid": "ReadSharedSecretsCurrentOnly",
                "Effect": "Allow",
                "Action": list(HOST_READ_OPS),
                "Resource": shared,
                "Condition": {
                    "ForAnyValue:StringEquals": {"secretsmanager:VersionStage": ["AWSCURRENT"]},
                    **network,
                },
            }
        )
    for i, key in enumerate(sorted(keys, key=lambda k: k.key_arn)):
        condition: dict[str, Any] = dict(network)
        if key.context:
            condition["StringEquals"] = {
                f"kms:EncryptionContext:{k}": v for k, v in sorted(key.context)
            }
        statement: dict[str, Any] = {
            "Sid": f"DecryptDataKeys{i}",
            "Effect": "Allow",
            "Action": ["kms:Decrypt"],
            "Resource": [key.key_arn],
        }
        if condition:
            statement["Condition"] = condition
        statements.append(statement)
    return {"Version": VERSION, "Statement": statements}


def server_policy(
    *,
    partition: str,
    region: str,
    account: str,
    sm_prefix: str,
    cmk_arns: Sequence[str] = (),
    webhook_mac_key_arn: str | None = None,
) -> dict[str, Any]:
    """kmsd's own policy: write secrets under its prefix, never read one.

    ``webhook_mac_key_arn``: the ARN of the webhook key (KMSD_WEBHOOK_MAC_KEY resolved), the
    only key kmsd may call GenerateMac with.
    """
    sm_resource = f"arn:{partition}:secretsmanager:{region}:{account}:secret:{sm_prefix}*"
    kms_resources = sorted(cmk_arns) or [f"arn:{partition}:kms:{region}:{account}:key/*"]
    statements: list[dict[str, Any]] = [
        {
            "Sid": "WriteSecretsUnderPrefix",
            "Effect": "Allow",
            "Action": list(SERVER_SM_ACTIONS),
            "Resource": [sm_resource],
        },
        {
            "Sid": "MakeDataKeysWithoutPlaintext",
            "Effect": "Allow",
            "Action": list(SERVER_KMS_ACTIONS),
            "Resource": kms_resources,
        },
    ]
    if webhook_mac_key_arn:
        statements.append(
            {
                "Sid": "DeriveWebhookSigningKeys",
                "Effect": "Allow",
                "Action": [WEBHOOK_MAC_ACTION],
                "Resource": [webhook_mac_key_arn],
            }
        )
    return {"Version": VERSION, "Statement": statements}


def actions_of(policy: dict[str, Any]) -> set[str]:
    """Every action a policy allows (for checks such as 'no read action')."""
    return {a for s in policy["Statement"] if s["Effect"] == "Allow" for a in s["Action"]}
