"""AWS Secrets Manager's answers, made from the agent's cache (pure: no I/O).

Applications written for AWS's Secrets Manager Agent (``/secretsmanager/get?secretId=``) or for
an AWS SDK (``GetSecretValue`` and friends, with the endpoint pointed at the agent) name a
secret by its SM name or ARN; kmsd's applications also know it by its effective name on the
agent's path. This module resolves such an id among the secrets the agent serves (nothing
else: another application's secret is "not found", exactly as SM says it), picks the version
by id and staging label under kmsd's visibility rules (pending and previous reach the owner
only: kmsd offers nothing else), and renders SM's JSON shapes.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kmsagent.state import STAGE_LABELS, PathView, Secret, Version

STAGE_OF_LABEL = {label: stage for stage, label in STAGE_LABELS.items()}
# SM appends six random characters to a secret's name in its ARN.
_ARN_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}$")
NOT_FOUND = "Secrets Manager can't find the specified secret."
GET_PARAMETERS = frozenset({"secretId", "versionId", "versionStage", "refreshNow"})
MAX_BATCH = 20  # SM's own limit for SecretIdList


class SmError(Exception):
    """An answer in SM's error shape: ``{"__type": code, "message": ...}`` with a status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, str]:
        return {"__type": self.code, "message": self.message}


class BadRequest(Exception):
    """A request AWS's agent refuses in plain text (unknown parameter, bad refreshNow, ...)."""


def not_found(message: str = NOT_FOUND) -> SmError:
    return SmError(400, "ResourceNotFoundException", message)


def invalid(message: str) -> SmError:
    return SmError(400, "InvalidParameterException", message)


@dataclass(frozen=True, slots=True)
class Query:
    secret_id: str
    version_id: str | None = None
    version_stage: str | None = None
    refresh_now: bool = False


def parse_get(pairs: Iterable[tuple[str, str]], *, path_id: str | None = None) -> Query:
    """The query of ``/secretsmanager/get`` (or of ``/v1/ID``, whose id is ``path_id``)."""
    found: dict[str, str] = {}
    for key, value in pairs:
        if key not in GET_PARAMETERS or (path_id is not None and key == "secretId"):
            raise BadRequest(f"unknown parameter: {key}")
        if key in found:
            raise BadRequest(f"repeated parameter: {key}")
        found[key] = value
    secret_id = path_id if path_id is not None else found.get("secretId", "")
    if not secret_id:
        raise BadRequest("missing parameter secretId" if path_id is None else "missing secret ID")
    refresh = found.get("refreshNow", "false").lower()
    if refresh not in ("true", "1", "false", "0"):
        raise BadRequest("invalid refreshNow value")
    return Query(
        secret_id,
        found.get("versionId") or None,
        found.get("versionStage") or None,
        refresh in ("true", "1"),
    )


def parse_sdk(doc: Any) -> Query:
    """A ``GetSecretValue`` body of the SM JSON protocol."""
    if not isinstance(doc, dict):
        raise invalid("the request body must be a JSON object")
    unknown = sorted(set(doc) - {"SecretId", "VersionId", "VersionStage"})
    if unknown:
        raise invalid(f"unknown parameter: {unknown[0]}")
    secret_id = doc.get("SecretId")
    version_id = doc.get("VersionId")
    stage = doc.get("VersionStage")
    if not isinstance(secret_id, str) or not secret_id:
        raise invalid("SecretId is required")
    for name, value in (("VersionId", version_id), ("VersionStage", stage)):
        if value is not None and not isinstance(value, str):
            raise invalid(f"{name} must be a string")
    return Query(secret_id, version_id, stage)


def secret_id_of(doc: Any) -> str:
    """The ``SecretId`` of a ``DescribeSecret`` or ``ListSecretVersionIds`` body (paging and
    ``IncludeDeprecated`` are accepted and have nothing to page: the agent serves few versions)."""
    if not isinstance(doc, dict):
        raise invalid("the request body must be a JSON object")
    unknown = sorted(set(doc) - {"SecretId", "MaxResults", "NextToken", "IncludeDeprecated"})
    if unknown:
        raise invalid(f"unknown parameter: {unknown[0]}")
    secret_id = doc.get("SecretId")
    if not isinstance(secret_id, str) or not secret_id:
        raise invalid("SecretId is required")
    return secret_id


def sm_name(arn: str) -> str:
    """The secret's SM name from its ARN (``...:secret:NAME-AbCdEf`` -> ``NAME``)."""
    _, _, tail = arn.partition(":secret:")
    return _ARN_SUFFIX.sub("", tail)


@dataclass(frozen=True, slots=True)
class Index:
    """One view's SM secrets by ARN and SM name, and by effective name."""

    by_id: Mapping[str, Secret]
    by_name: Mapping[str, Secret]


# The index of each view served, built once per view (a view never changes: a new one replaces
# it), so a read costs dictionary lookups, not a pass over every secret.
_INDEXES: dict[int, tuple[PathView, Index]] = {}


def index(view: PathView) -> Index:
    cached = _INDEXES.get(id(view))
    if cached is not None and cached[0] is view:
        return cached[1]
    served = {n: s for n, s in view.secrets.items() if s.kind != "datakey"}
    by_id: dict[str, Secret] = {}
    for secret in served.values():
        by_id[secret.arn] = by_id[sm_name(secret.arn)] = secret
    built = Index(by_id, served)
    for key in [k for k, (v, _) in _INDEXES.items() if v.path == view.path]:
        del _INDEXES[key]  # the view this one replaced
    _INDEXES[id(view)] = (view, built)
    return built


def find(views: Mapping[str, PathView], secret_id: str) -> tuple[PathView, Secret]:
    """The served secret ``secret_id`` names: its ARN, its SM name, ``PATH/NAME`` (the served
    path or the node the secret lives on), or its effective name when only one served path
    has it. Data keys are not SM secrets."""
    matches: list[tuple[PathView, Secret]] = []
    path, _, name = secret_id.rpartition("/")
    for view in views.values():
        found = index(view)
        secret = found.by_id.get(secret_id)
        if secret is not None:
            return view, secret
        secret = found.by_name.get(secret_id) or found.by_name.get(name)
        if secret is not None and (secret.name == secret_id or path in (view.path, secret.source)):
            matches.append((view, secret))
    if not matches:
        raise not_found()
    if len({s.arn for _, s in matches}) > 1:
        paths = ", ".join(sorted(v.path for v, _ in matches))
        raise invalid(
            f"{secret_id!r} names a secret on several paths ({paths}): "
            "use PATH/NAME, the SM name or the ARN"
        )
    return matches[0]


def pick(secret: Secret, version_id: str | None, label: str | None) -> Version:
    """The version asked for: by id, by staging label, both (they must agree), or current."""
    stage = None
    if label is not None:
        stage = STAGE_OF_LABEL.get(label)
        if stage is None:
            raise not_found(
                f"Secrets Manager can't find the specified secret value for staging label: {label}"
            )
    if version_id is not None:
        version = next((v for v in secret.versions if v.version_id == version_id), None)
        if version is None or (stage is not None and version.stage != stage):
            raise not_found(
                f"Secrets Manager can't find the specified secret value for VersionId: {version_id}"
            )
        return version
    version = secret.at(stage or "current")
    if version is None:
        raise not_found(
            "Secrets Manager can't find the specified secret value for staging label: "
            f"{label or 'AWSCURRENT'}"
        )
    return version


def _epoch(created_at: str | None) -> float | None:
    if created_at is None:
        return None
    try:
        return round(datetime.fromisoformat(created_at).timestamp(), 3)
    except ValueError:
        return None


def secret_value(secret: Secret, version: Version, *, dates_as_text: bool) -> dict[str, Any]:
    """``GetSecretValue``'s answer. AWS's agent writes ``CreatedDate`` as a string of epoch
    seconds; the JSON protocol (SDKs) as a number."""
    doc: dict[str, Any] = {
        "ARN": secret.arn,
        "Name": sm_name(secret.arn),
        "VersionId": version.version_id,
        "VersionStages": [STAGE_LABELS[version.stage]],
    }
    if isinstance(version.value, str):
        doc["SecretString"] = version.value
    else:
        doc["SecretBinary"] = base64.b64encode(version.value).decode("ascii")
    created = _epoch(version.created_at)
    if created is not None:
        doc["CreatedDate"] = f"{created:.3f}" if dates_as_text else created
    return doc


def describe(secret: Secret) -> dict[str, Any]:
    """``DescribeSecret``: name, ARN and the versions the agent serves with their labels."""
    return {
        "ARN": secret.arn,
        "Name": sm_name(secret.arn),
        "VersionIdsToStages": {
            v.version_id: [STAGE_LABELS[v.stage]]
            for v in secret.versions
            if v.stage in STAGE_LABELS
        },
    }


def list_versions(secret: Secret) -> dict[str, Any]:
    """``ListSecretVersionIds``: the versions the agent serves."""
    versions = []
    for v in secret.versions:
        entry: dict[str, Any] = {
            "VersionId": v.version_id,
            "VersionStages": [STAGE_LABELS[v.stage]],
        }
        created = _epoch(v.created_at)
        if created is not None:
            entry["CreatedDate"] = created
        versions.append(entry)
    return {"ARN": secret.arn, "Name": sm_name(secret.arn), "Versions": versions}


def batch_ids(doc: Any) -> list[str]:
    """The ``SecretIdList`` of a ``BatchGetSecretValue`` body (filters are not served)."""
    if not isinstance(doc, dict):
        raise invalid("the request body must be a JSON object")
    if "Filters" in doc:
        raise invalid("kmsagent serves BatchGetSecretValue by SecretIdList only, not Filters")
    unknown = sorted(set(doc) - {"SecretIdList", "MaxResults", "NextToken"})
    if unknown:
        raise invalid(f"unknown parameter: {unknown[0]}")
    ids = doc.get("SecretIdList")
    if (
        not isinstance(ids, list)
        or not 0 < len(ids) <= MAX_BATCH
        or not all(isinstance(i, str) and i for i in ids)
    ):
        raise invalid(f"SecretIdList must list 1-{MAX_BATCH} secret ids")
    return list(ids)
