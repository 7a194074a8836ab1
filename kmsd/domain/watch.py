"""Validation of ``POST /v1/watch`` bodies and timeouts, and the reports' digest (pure).

A watch body carries what its instance holds (the *reports*: ``held``, ``versions``,
``processes``, ``app_process_ids``), which grows with the application: about 150 bytes a
secret, more with every process that read them. An idle agent re-polls every hold, so it sends
the reports in full only when they changed since kmsd last took them, and otherwise only
``reports_digest``, the sha256 of their canonical JSON (:func:`reports_digest`). kmsd keeps
the digest of the reports it stored; a digest it does not hold is answered at once with
``reports-unknown`` (409), and the agent sends its reports in full again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from kmsd.domain.names import SEGMENT_RE, NodePath, check_segment
from kmsd.errors import InvalidInput

_INSTANCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
MAX_PROCESS_IDS = 1024
# At most this many entries in ``held``, ``versions`` and each ``processes.{pid}``: more than
# the secrets of any effective set kmsagent can take. It reads at most 8 MiB of one
# (kmsagent.upstream.MAX_ANSWER_BYTES) and an SM secret fills at least ~230 bytes of it (name,
# source, ARN, expiry, one version): about 36,000 secrets. So whatever the application's size,
# its agents' reports pass.
MAX_HELD = 50_000
MAX_VERSIONS_PER_SECRET = 64  # data keys keep every period's key; SM secrets offer three
# The body limit of a watch alone (every other call keeps kmsd.app.CLIENT_MAX_SIZE, 1 MiB):
# ``held`` and ``versions`` of the largest set an agent can take are under 8 MiB (a secret's
# entries there are shorter than its entry in the effective set), and kmsagent reports at most
# 50,000 process reads (kmsagent.reports.MAX_REPORTED_READS, ~3 MiB). No larger: a body is
# parsed on the event loop, up to ~0.1 s a MiB when it is all one-letter entries (about a
# second at this limit; bench/watch_reports.py). Full reports are rare: idle polls send the
# digest.
WATCH_MAX_BODY = 12 * 1024 * 1024
# The fields a digest stands for, in the order they are written.
REPORT_FIELDS = ("app_process_ids", "held", "processes", "versions")
WATCH_FIELDS = frozenset(
    {
        "path",
        "path_version",
        "instance_id",
        "role",
        "reports_digest",
        *REPORT_FIELDS,
    }
)
# Serving instances (agents) hold values and count in rotation gates; observers (kmsctl watch,
# dashboards) only watch: they are listed apart and never waited for.
ROLES = ("serving", "observer")


@dataclass(frozen=True, slots=True)
class WatchRequest:
    path: NodePath
    path_version: int
    instance_id: str
    app_process_ids: tuple[str, ...]
    held: dict[str, str]
    # Per application process: the version of each secret it last read through the agent.
    processes: dict[str, dict[str, str]] = field(default_factory=dict)
    # Every version of each secret the instance holds (current, and the owner's pending and
    # previous): a rotation's first gate asks whether the pending one is among them.
    versions: dict[str, list[str]] = field(default_factory=dict)
    role: str = "serving"
    # The digest of the reports: computed from a body that carries them, or the one a body
    # sent instead of them (``reports_sent`` False: kmsd must already hold those reports).
    reports_digest: str = ""
    reports_sent: bool = True


def reports_digest(body: Mapping[str, Any]) -> str:
    """Return the hex sha256 of the report fields of a watch body, as canonical JSON.

    Canonical: only the fields of :data:`REPORT_FIELDS` that are present, app process ids as
    strings (as they are stored), object keys sorted at every level, no whitespace, UTF-8
    (orjson's output with ``OPT_SORT_KEYS``). kmsd hashes the body it parsed; kmsagent hashes
    the body it sends; both give the same digest.
    """
    fields = {name: body[name] for name in REPORT_FIELDS if name in body}
    if isinstance(pids := fields.get("app_process_ids"), list):
        fields["app_process_ids"] = [str(pid) for pid in pids]
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


def check_instance_id(instance: Any, field_name: str) -> None:
    """Refuse anything but 1-128 characters of letters, digits and . _ : @ / -."""
    if not isinstance(instance, str) or not _INSTANCE_RE.fullmatch(instance):
        raise InvalidInput(
            f"{field_name} must be 1-128 characters of letters, digits and . _ : @ / -"
        )


def parse_watch(doc: Mapping[str, Any]) -> WatchRequest:
    """Validate a watch body; every refusal names the field."""
    raw_path = doc.get("path")
    if not isinstance(raw_path, str):
        raise InvalidInput("'path' must be a string: namespace/application[/child...]")
    path = NodePath.parse(raw_path)
    if path.is_namespace:
        raise InvalidInput("'path' names a namespace; watch an application or a node below it")
    version = doc.get("path_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**63:
        raise InvalidInput("'path_version' must be a non-negative integer (0 if you hold none)")
    instance = doc.get("instance_id")
    check_instance_id(instance, "'instance_id'")
    assert isinstance(instance, str)
    role = doc.get("role", "serving")
    if role not in ROLES:
        raise InvalidInput("'role' must be 'serving' (an agent holding values) or 'observer'")
    if (digest := _digest_instead(doc)) is not None:
        return WatchRequest(
            path, version, instance, (), {}, role=role, reports_digest=digest, reports_sent=False
        )
    pids = doc.get("app_process_ids", [])
    if not isinstance(pids, list) or len(pids) > MAX_PROCESS_IDS:
        raise InvalidInput(f"'app_process_ids' must be a list of at most {MAX_PROCESS_IDS} ids")
    clean_pids: list[str] = []
    for pid in pids:
        if isinstance(pid, bool) or not isinstance(pid, str | int) or len(str(pid)) > 64:
            raise InvalidInput("each app process id must be a string or integer (<= 64 chars)")
        clean_pids.append(str(pid))
    held = _held(doc.get("held", {}), "'held'")
    processes = doc.get("processes", {})
    if not isinstance(processes, dict) or len(processes) > MAX_PROCESS_IDS:
        raise InvalidInput(
            f"'processes' must be an object of at most {MAX_PROCESS_IDS} pid: {{name: version_id}}"
        )
    for pid in processes:
        if not 0 < len(pid) <= 64:
            raise InvalidInput("each process id in 'processes' must be 1-64 characters")
    reads = {pid: _held(seen, f"'processes.{pid}'") for pid, seen in processes.items()}
    # A process that reported what it read is a process that reads from this instance.
    clean_pids.extend(pid for pid in reads if pid not in clean_pids)
    if len(clean_pids) > MAX_PROCESS_IDS:
        raise InvalidInput(f"at most {MAX_PROCESS_IDS} app process ids per instance")
    versions = _versions(doc.get("versions", {}))
    return WatchRequest(
        path,
        version,
        instance,
        tuple(clean_pids),
        held,
        reads,
        versions,
        role,
        reports_digest=reports_digest(doc),
    )


def _digest_instead(doc: Mapping[str, Any]) -> str | None:
    """The ``reports_digest`` a body sends instead of its reports, if it does."""
    if "reports_digest" not in doc:
        return None
    digest = doc["reports_digest"]
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise InvalidInput("'reports_digest' must be a sha256 as 64 lowercase hex digits")
    if sent := [name for name in REPORT_FIELDS if name in doc]:
        raise InvalidInput(
            f"'reports_digest' stands for the reports: send it or {', '.join(sent)}, not both"
        )
    return digest


def _versions(versions: Any) -> dict[str, list[str]]:
    """``{secret name: [version ids]}``: every version of each secret an instance holds."""
    if not isinstance(versions, dict) or len(versions) > MAX_HELD:
        raise InvalidInput(f"'versions' must be an object of at most {MAX_HELD} name: [ids]")
    if not all(map(SEGMENT_RE.fullmatch, versions)):  # one pass while all is well (big sets)
        for name in versions:
            check_segment(name, "secret name in 'versions'")
    for ids in versions.values():
        if (
            not isinstance(ids, list)
            or len(ids) > MAX_VERSIONS_PER_SECRET
            or not all(isinstance(i, str) and 0 < len(i) <= 128 for i in ids)
        ):
            raise InvalidInput(
                f"each 'versions' entry must be a list of at most {MAX_VERSIONS_PER_SECRET} "
                "version ids"
            )
    return {n: list(v) for n, v in versions.items()}


def _held(held: Any, field_name: str) -> dict[str, str]:
    """A ``{secret name: version id}`` map, as agents report what they (or a process) hold."""
    if not isinstance(held, dict) or len(held) > MAX_HELD:
        raise InvalidInput(f"{field_name} must be an object of at most {MAX_HELD} name: version_id")
    if not all(map(SEGMENT_RE.fullmatch, held)):  # one pass while all is well (big sets)
        for name in held:
            check_segment(name, f"secret name in {field_name}")
    if not all(isinstance(v, str) and 0 < len(v) <= 128 for v in held.values()):
        raise InvalidInput(f"each version id in {field_name} must be a non-empty string")
    return dict(held)


def parse_timeout(raw: str | None, *, default: float, maximum: float) -> float:
    """``?timeout=`` in seconds: absent means ``default``, above ``maximum`` is clamped."""
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput("timeout must be a number of seconds") from None
    if not value >= 0:  # also refuses NaN
        raise InvalidInput("timeout must be zero (short poll) or a positive number of seconds")
    return min(value, maximum)
