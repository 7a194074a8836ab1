"""Effective-set resolution.

The effective set of ``ns/app/r/c`` is the union of the secrets attached to ``ns/app``,
``ns/app/r`` and ``ns/app/r/c``; where two levels attach a secret with the same name, the
deeper one wins (a cluster overrides its region, a region its application). Each entry names
the node it comes from and the nodes it shadows, so an operator can see why a value applies.

Only versions a client may use are offered: the owner sees ``pending``, ``current`` and
``previous``; ``revoked`` and ``deprecated`` (no longer labelled in SM) are for operators only.

``path_version`` is not computed here: it is the largest change number among the chain's nodes
(see sql/0001), so it moves exactly when one of those nodes' own secrets change.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

STAGES = ("pending", "current", "previous", "revoked", "deprecated")
OWNER_STAGES = frozenset({"pending", "current", "previous"})
KINDS = ("json", "binary")  # what a value can be written as; "datakey" is made by kmsd


@dataclass(frozen=True, slots=True)
class SecretVersion:
    version_id: str
    stage: str
    created_at: datetime
    ciphertext: bytes | None = None  # data keys: the KMS ciphertext blob (not a secret)


@dataclass(frozen=True, slots=True)
class SecretMeta:
    """A secret's metadata as stored in PostgreSQL (never its value)."""

    name: str
    kind: str
    sm_arn: str
    versions: tuple[SecretVersion, ...]
    expires_at: datetime | None = None
    description: str = ""
    cmk_arn: str | None = None  # data keys only


@dataclass(frozen=True, slots=True)
class RefMeta:
    """A reference on a node: a secret shared by another application, under a local name."""

    local_name: str
    target: SecretMeta
    target_ref: str  # "path/name" of the shared secret


@dataclass(frozen=True, slots=True)
class NodeSecrets:
    """The secrets (and references) attached to one node of a chain."""

    path: str
    secrets: tuple[SecretMeta, ...]
    refs: tuple[RefMeta, ...] = ()


@dataclass(frozen=True, slots=True)
class EffectiveEntry:
    secret: SecretMeta
    source: str
    overrides: tuple[str, ...]
    name: str = ""  # the local name (differs from secret.name for a reference)
    via: str | None = None  # for a reference: the node that holds it


def resolve(chain: Sequence[NodeSecrets]) -> list[EffectiveEntry]:
    """Resolve a chain ordered from the application down to the leaf, sorted by name."""
    winners: dict[str, EffectiveEntry] = {}

    def shadowed(name: str) -> tuple[str, ...]:
        above = winners.get(name)
        return (above.source, *above.overrides) if above is not None else ()

    for node in chain:
        for secret in node.secrets:
            winners[secret.name] = EffectiveEntry(
                secret, node.path, shadowed(secret.name), secret.name
            )
        # A reference is one more secret of its node, under its local name: the same override
        # rules apply, and its source names the shared secret it comes from.
        for ref in node.refs:
            winners[ref.local_name] = EffectiveEntry(
                ref.target, ref.target_ref, shadowed(ref.local_name), ref.local_name, node.path
            )
    return [winners[name] for name in sorted(winners)]


def usable_versions(
    versions: Sequence[SecretVersion], stages: frozenset[str] = OWNER_STAGES
) -> list[SecretVersion]:
    """Return the versions offered to a client, current first, then pending, then previous."""
    order = {"current": 0, "pending": 1, "previous": 2}
    return sorted(
        (v for v in versions if v.stage in stages),
        key=lambda v: (order.get(v.stage, 9), v.version_id),
    )


def datakey_context(source: str, name: str) -> dict[str, str]:
    """The KMS encryption context a data key is bound to (and must be decrypted with)."""
    return {"kmsd:name": name, "kmsd:path": source}


def entry_document(entry: EffectiveEntry) -> dict[str, Any]:
    """Render one entry as the API shows it: metadata and usable version ids, never a value."""
    secret = entry.secret
    doc: dict[str, Any] = {
        "name": entry.name or secret.name,
        "kind": secret.kind,
        "source": entry.source,
        "overrides": list(entry.overrides),
        "sm_arn": secret.sm_arn,
        "expires_at": secret.expires_at.isoformat() if secret.expires_at else None,
    }
    if entry.via is not None:
        # A referencing application sees the current version only.
        doc["via"] = entry.via
        stages = frozenset({"current"})
    else:
        stages = OWNER_STAGES
    if secret.kind != "datakey":
        doc["versions"] = [
            {"version_id": v.version_id, "stage": v.stage, "created_at": v.created_at.isoformat()}
            for v in usable_versions(secret.versions, stages)
        ]
        return doc
    # Every data key but a revoked one stays listed, newest first: old data needs old keys.
    doc["cmk_arn"] = secret.cmk_arn
    owner = entry.source.rsplit("/", 1)[0] if entry.via is not None else entry.source
    doc["encryption_context"] = datakey_context(owner, secret.name)
    doc["versions"] = [
        {
            "version_id": v.version_id,
            "stage": v.stage,
            "created_at": v.created_at.isoformat(),
            "ciphertext_blob": base64.b64encode(v.ciphertext or b"").decode("ascii"),
        }
        for v in sorted(secret.versions, key=lambda v: v.created_at, reverse=True)
        if v.stage != "revoked" and (entry.via is None or v.stage == "current")
    ]
    return doc


def set_hash(documents: Sequence[dict[str, Any]]) -> str:
    """sha256 over the canonical JSON (sorted keys, no spaces) of the rendered set."""
    return hashlib.sha256(orjson.dumps(list(documents), option=orjson.OPT_SORT_KEYS)).hexdigest()


def effective_document(
    path: str, path_version: int, chain: Sequence[NodeSecrets]
) -> dict[str, Any]:
    """Build the ``GET /v1/effective`` body for a chain."""
    secrets = [entry_document(e) for e in resolve(chain)]
    return {
        "path": path,
        "path_version": path_version,
        "hash": set_hash(secrets),
        "secrets": secrets,
    }
