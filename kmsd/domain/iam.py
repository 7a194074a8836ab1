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

Two shapes of host policy. The *exact* shape lists every secret's ARN, so it must be applied
again whenever the application gains a secret. The *prefix* shape does not drift: SM names are
deterministic (``<KMSD_SM_PREFIX><namespace>/<application>/.../<name>``), so one resource
pattern covers every secret the application will ever have, and conditions on the tags kmsd
writes on each secret (``SM_TAG_*``) keep a path below the application to its own chain and
subtree. The pattern alone would also match secrets someone else created under kmsd's prefix;
the tag condition excludes them unless they carry kmsd's tags, which only a principal allowed to
create or tag under the prefix (kmsd, by ``server_policy``) can set. Shared secrets of other
applications, and data keys (a CMK and an encryption context each), are listed exactly in both
shapes: adding one of those means applying the policy again, which ``drift`` reports.

IAM refuses a policy whose ``Statement`` is empty, and a policy that grants nothing is useless
anyway: the exact shape of an application with nothing to read raises ``NothingToGrant``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kmsd.domain.names import NodePath
from kmsd.errors import Conflict

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


SHAPES = ("prefix", "exact")
# The prefix shape by default: it covers the application's later secrets without re-applying.
DEFAULT_SHAPE = "prefix"
# The tags kmsd writes on every SM secret it creates; the prefix shape's conditions read them.
SM_TAG_APP = "kmsd:app"
SM_TAG_PATH = "kmsd:path"
SM_TAG_NAME = "kmsd:name"


class NothingToGrant(Conflict):
    """The exact shape of an application with nothing to read: IAM refuses an empty policy."""

    code = "nothing-to-grant"
    title = "Nothing to grant"


@dataclass(frozen=True, slots=True)
class KeyUse:
    """A CMK an application decrypts with, and the encryption context kmsd binds to it."""

    key_arn: str
    context: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Shared:
    """A secret referenced at the policy's path; ``owner_path`` is the node that holds it."""

    arn: str
    owner_path: str


def sm_tags(path: NodePath, name: str) -> dict[str, str]:
    """The tags of the SM secret of ``name`` at ``path`` (what the prefix shape relies on)."""
    return {SM_TAG_APP: str(path.application), SM_TAG_PATH: str(path), SM_TAG_NAME: name}


def app_sm_prefix(sm_prefix: str, path: NodePath) -> str:
    """The start of every SM name of ``path``'s application (as ``sm_name_for`` builds them)."""
    return f"{sm_prefix}{path.application}/"


def in_scope(path: NodePath, node: str) -> bool:
    """Whether ``path``'s hosts read the secrets of ``node``: its chain or its subtree."""
    chain = {str(p) for p in path.ancestors_from_application()}
    return node in chain or node.startswith(f"{path}/")


def app_policy(
    secret_arns: Iterable[str],
    *,
    labels: Sequence[str] = OWNER_LABELS,
    source_cidrs: Sequence[str] = (),
    keys: Sequence[KeyUse] = (),
    shared_arns: Iterable[str] = (),
) -> dict[str, Any]:
    """The exact shape: every secret by ARN (apply it again after each new secret)."""
    network = _network(source_cidrs)
    statements: list[dict[str, Any]] = []
    arns = sorted(set(secret_arns))
    if arns:
        statements.append(_read("ReadOwnSecretsByStage", arns, labels, network))
    statements += _shared(set(shared_arns) - set(arns), network)
    statements += _decrypt(keys, network)
    if not statements:
        raise NothingToGrant(
            "this application has no secret, share or data key yet, so an exact policy would "
            "grant nothing (and IAM refuses an empty Statement); ask for shape=prefix, which "
            "also covers the secrets it gets later"
        )
    return {"Version": VERSION, "Statement": statements}


def prefix_policy(
    path: NodePath,
    *,
    partition: str,
    region: str,
    account: str,
    sm_prefix: str,
    labels: Sequence[str] = OWNER_LABELS,
    source_cidrs: Sequence[str] = (),
    keys: Sequence[KeyUse] = (),
    shared: Iterable[Shared] = (),
) -> dict[str, Any]:
    """The prefix shape: every secret of ``path``'s scope, present and future, by name and tag."""
    network = _network(source_cidrs)
    resource = (
        f"arn:{partition}:secretsmanager:{region}:{account}:secret:"
        f"{app_sm_prefix(sm_prefix, path)}*"
    )
    tags: dict[str, Any] = {
        "StringEquals": {f"secretsmanager:ResourceTag/{SM_TAG_APP}": str(path.application)}
    }
    if path.depth > 2:
        # Below the application: its chain and its own subtree, not its sibling clusters.
        chain = [str(p) for p in path.ancestors_from_application()]
        tags["StringLike"] = {f"secretsmanager:ResourceTag/{SM_TAG_PATH}": [*chain, f"{path}/*"]}
    statements = [_read("ReadOwnSecretsByPrefixAndTag", [resource], labels, network | tags)]
    statements += _shared({s.arn for s in shared if not in_scope(path, s.owner_path)}, network)
    statements += _decrypt(keys, network)
    return {"Version": VERSION, "Statement": statements}


def _network(source_cidrs: Sequence[str]) -> dict[str, Any]:
    return {"IpAddress": {"aws:SourceIp": list(source_cidrs)}} if source_cidrs else {}


def _read(
    sid: str, resources: list[str], labels: Sequence[str], condition: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": list(HOST_READ_OPS),
        "Resource": resources,
        "Condition": {
            "ForAnyValue:StringEquals": {"secretsmanager:VersionStage": list(labels)},
            **condition,
        },
    }


def _shared(arns: Iterable[str], network: Mapping[str, Any]) -> list[dict[str, Any]]:
    # Secrets other applications share with this one: the current version only.
    shared = sorted(arns)
    if not shared:
        return []
    return [_read("ReadSharedSecretsCurrentOnly", shared, ["AWSCURRENT"], network)]


def _decrypt(keys: Sequence[KeyUse], network: Mapping[str, Any]) -> list[dict[str, Any]]:
    statements = []
    for i, key in enumerate(sorted(set(keys), key=lambda k: (k.key_arn, k.context))):
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
    return statements


def grants(policy: Mapping[str, Any]) -> frozenset[tuple[str, str, str]]:
    """What a policy allows, as (action, resource, condition) triples: Sids and order aside."""
    out: set[tuple[str, str, str]] = set()
    for statement in policy.get("Statement", []):
        if statement.get("Effect") != "Allow":
            continue
        condition = json.dumps(statement.get("Condition", {}), sort_keys=True)
        for action in statement["Action"]:
            out.update((action, resource, condition) for resource in statement["Resource"])
    return frozenset(out)


def uncovered(fetched: Mapping[str, Any], needed: Mapping[str, Any] | None) -> list[str]:
    """The resources ``needed`` grants that the policy fetched earlier does not (as it grants).

    ``needed`` None: nothing is needed now (an exact shape with nothing left to read).
    """
    if needed is None:
        return []
    return sorted({resource for _, resource, _ in grants(needed) - grants(fetched)})


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
