"""What the agent holds, as immutable values (pure: no I/O).

kmsd's effective set names secrets and versions; the values come from AWS. A :class:`PathView`
is one whole, consistent generation of a path - metadata and every value - built only once all
its values are at hand and then published by replacing one reference. A reader takes the
reference once and renders from it alone, so it never sees half of an old set and half of a
new one.

Values are cached by ``(ARN, version id)``: a version's value never changes in Secrets Manager
(nor a data key's plaintext for its ciphertext), so a change to the set costs one AWS call per
*new* version, not one per secret.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

# kmsd stage -> the Secrets Manager staging label the read must name. The hosts' IAM policy
# conditions on ``secretsmanager:VersionStage``, so the label travels with the version id.
STAGE_LABELS = {"current": "AWSCURRENT", "pending": "AWSPENDING", "previous": "AWSPREVIOUS"}
STAGES = tuple(STAGE_LABELS)

Plain = str | bytes
ValueKey = tuple[str, str]  # (SM secret ARN or KMS key ARN, version id)


class BadDocument(ValueError):
    """kmsd sent an effective set this agent cannot use (a bug or a version mismatch)."""


@dataclass(frozen=True, slots=True)
class Fetch:
    """One value to read from AWS: an SM version by id and label, or a data key to decrypt."""

    key: ValueKey
    secret: str
    service: str  # "secretsmanager" | "kms"
    version_id: str
    stage: str
    sm_arn: str | None = None
    cmk_arn: str | None = None
    ciphertext: bytes = b""
    context: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        return STAGE_LABELS[self.stage]


@dataclass(frozen=True, slots=True)
class Version:
    version_id: str
    stage: str
    value: Plain
    created_at: str | None = None


@dataclass(frozen=True, slots=True)
class Secret:
    name: str
    kind: str  # json | binary | datakey
    source: str
    via: str | None
    arn: str  # SM secret ARN, or the CMK ARN of a data key
    expires_at: str | None
    versions: tuple[Version, ...]  # kmsd's order: current first (data keys: newest first)

    def at(self, stage: str) -> Version | None:
        return next((v for v in self.versions if v.stage == stage), None)

    @property
    def current(self) -> Version | None:
        return self.at("current")


@dataclass(frozen=True, slots=True)
class PathView:
    path: str
    path_version: int
    hash: str
    secrets: Mapping[str, Secret]

    def holding(self) -> dict[str, list[str]]:
        """Every version of each SM secret this instance can serve (pending and previous too).

        Data keys are left out: every old period's key stays listed, so the list only grows,
        and rotations (the reason for this report) never apply to them.
        """
        return {
            name: [v.version_id for v in s.versions]
            for name, s in self.secrets.items()
            if s.kind != "datakey"
        }

    def held(self) -> dict[str, str]:
        """What this instance holds, as kmsd's adoption report wants it: name -> current id."""
        held = {}
        for name, secret in self.secrets.items():
            version = secret.current
            if version is not None:
                held[name] = version.version_id
        return held


def _str(doc: Mapping[str, Any], field: str) -> str:
    value = doc.get(field)
    if not isinstance(value, str) or not value:
        raise BadDocument(f"effective set: {field!r} missing or not a string")
    return value


def fetches(doc: Mapping[str, Any]) -> list[Fetch]:
    """Every value the effective set ``doc`` needs, in document order."""
    out: list[Fetch] = []
    for entry in _entries(doc):
        name = _str(entry, "name")
        for v in entry.get("versions") or ():
            stage = _str(v, "stage")
            version_id = _str(v, "version_id")
            if entry.get("kind") != "datakey" and stage not in STAGE_LABELS:
                # SM reads name a staging label; data keys keep every old period's key
                # (deprecated) for old data, and KMS needs no label.
                raise BadDocument(f"effective set: {name!r} offers unknown stage {stage!r}")
            if entry.get("kind") == "datakey":
                cmk = _str(entry, "cmk_arn")
                context = entry.get("encryption_context") or {}
                if not isinstance(context, dict):
                    raise BadDocument(f"effective set: {name!r} encryption_context")
                try:
                    blob = base64.b64decode(_str(v, "ciphertext_blob"), validate=True)
                except binascii.Error:
                    raise BadDocument(f"effective set: {name!r} ciphertext_blob") from None
                out.append(
                    Fetch(
                        key=(cmk, version_id),
                        secret=name,
                        service="kms",
                        version_id=version_id,
                        stage=stage,
                        cmk_arn=cmk,
                        ciphertext=blob,
                        context=tuple(sorted((str(k), str(x)) for k, x in context.items())),
                    )
                )
            else:
                arn = _str(entry, "sm_arn")
                out.append(
                    Fetch(
                        key=(arn, version_id),
                        secret=name,
                        service="secretsmanager",
                        version_id=version_id,
                        stage=stage,
                        sm_arn=arn,
                    )
                )
    return out


def missing(doc: Mapping[str, Any], have: Mapping[ValueKey, Plain]) -> list[Fetch]:
    """The fetches of ``doc`` whose values are not cached yet (each key once)."""
    seen: set[ValueKey] = set()
    out = []
    for f in fetches(doc):
        if f.key not in have and f.key not in seen:
            seen.add(f.key)
            out.append(f)
    return out


def build_view(doc: Mapping[str, Any], values: Mapping[ValueKey, Plain]) -> PathView:
    """The whole view of ``doc``; every value must be in ``values`` (KeyError otherwise)."""
    secrets: dict[str, Secret] = {}
    for entry in _entries(doc):
        name = _str(entry, "name")
        kind = _str(entry, "kind")
        arn = _str(entry, "cmk_arn" if kind == "datakey" else "sm_arn")
        versions = tuple(
            Version(
                version_id=v["version_id"],
                stage=v["stage"],
                value=values[(arn, v["version_id"])],
                created_at=v.get("created_at"),
            )
            for v in entry.get("versions") or ()
        )
        secrets[name] = Secret(
            name=name,
            kind=kind,
            source=str(entry.get("source", "")),
            via=entry.get("via"),
            arn=arn,
            expires_at=entry.get("expires_at"),
            versions=versions,
        )
    version = doc.get("path_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise BadDocument("effective set: 'path_version' missing or not an integer")
    return PathView(
        path=_str(doc, "path"), path_version=version, hash=_str(doc, "hash"), secrets=secrets
    )


def _entries(doc: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    entries = doc.get("secrets")
    if not isinstance(entries, list):
        raise BadDocument("effective set: 'secrets' missing or not a list")
    return entries


def keys_of(views: Iterable[PathView]) -> set[ValueKey]:
    """Every value key the given views use: the rest of the value cache can be dropped."""
    return {
        (s.arn, v.version_id) for view in views for s in view.secrets.values() for v in s.versions
    }


# -- rendering for the local API -------------------------------------------------------------


def render_version(secret: Secret, version: Version) -> dict[str, Any]:
    """One version of a secret as the local API shows it (the value included)."""
    doc: dict[str, Any] = {
        "name": secret.name,
        "kind": secret.kind,
        "version_id": version.version_id,
        "stage": version.stage,
    }
    value = version.value
    if secret.kind == "json" and isinstance(value, str):
        doc["value"] = _json_or_text(value)
    elif isinstance(value, str):
        doc["value"] = value
    else:
        doc["value_base64"] = base64.b64encode(value).decode("ascii")
    if version.created_at is not None:
        doc["created_at"] = version.created_at
    if secret.expires_at is not None:
        doc["expires_at"] = secret.expires_at
    return doc


def _json_or_text(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def render_all(view: PathView) -> dict[str, Any]:
    """Every secret of a path at its current version (data keys: the newest usable key)."""
    secrets = {}
    for name, secret in sorted(view.secrets.items()):
        version = secret.current if secret.kind != "datakey" else next(iter(secret.versions), None)
        if version is not None:
            secrets[name] = render_version(secret, version)
    return {
        "path": view.path,
        "path_version": view.path_version,
        "hash": view.hash,
        "secrets": secrets,
    }


def render_datakeys(secret: Secret) -> dict[str, Any]:
    """Every usable data key of ``secret``, newest first, for decrypting old data too."""
    return {
        "name": secret.name,
        "cmk_arn": secret.arn,
        "keys": [render_version(secret, v) for v in secret.versions],
    }


class ProcessReads:
    """Which version of each secret each application process last read, per path.

    Processes name themselves with ``X-App-Process-Id``. A process silent for ``forget_after``
    seconds is dropped; at most ``limit`` are kept per path (the least recently seen go first),
    so a misbehaving client cannot grow the agent or the reports without bound.
    """

    def __init__(self, *, forget_after: float = 3600.0, limit: int = 1024) -> None:
        self._forget_after = forget_after
        self._limit = limit
        # path -> pid -> (last seen, {name: version id}); dicts keep insertion (= recency) order
        self._reads: dict[str, dict[str, tuple[float, dict[str, str]]]] = {}

    def record(self, path: str, pid: str, read: Mapping[str, str], now: float) -> bool:
        """Note what ``pid`` read; True when that changes what should be reported."""
        procs = self._reads.setdefault(path, {})
        _, before = procs.pop(pid, (0.0, {}))
        after = {**before, **read}
        procs[pid] = (now, after)
        while len(procs) > self._limit:
            del procs[next(iter(procs))]
        return after != before

    def forget(self, path: str, pid: str) -> None:
        """Drop a process that is gone (a supervised child that was restarted)."""
        self._reads.get(path, {}).pop(pid, None)

    def report(self, path: str, now: float) -> dict[str, dict[str, str]]:
        """``{pid: {name: version id}}`` of the processes seen recently on ``path``."""
        procs = self._reads.get(path, {})
        for pid in [p for p, (seen, _) in procs.items() if now - seen > self._forget_after]:
            del procs[pid]
        return {pid: dict(read) for pid, (_, read) in procs.items()}
