"""Validation of ``POST /v1/watch`` bodies and timeouts (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kmsd.domain.names import NodePath, check_segment
from kmsd.errors import InvalidInput

_INSTANCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")
MAX_PROCESS_IDS = 1024
MAX_HELD = 1000
MAX_VERSIONS_PER_SECRET = 64  # data keys keep every period's key; SM secrets offer three
WATCH_FIELDS = frozenset(
    {
        "path",
        "path_version",
        "instance_id",
        "app_process_ids",
        "held",
        "processes",
        "versions",
        "role",
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
    role = doc.get("role", "serving")
    if role not in ROLES:
        raise InvalidInput("'role' must be 'serving' (an agent holding values) or 'observer'")
    return WatchRequest(path, version, instance, tuple(clean_pids), held, reads, versions, role)


def _versions(versions: Any) -> dict[str, list[str]]:
    """``{secret name: [version ids]}``: every version of each secret an instance holds."""
    if not isinstance(versions, dict) or len(versions) > MAX_HELD:
        raise InvalidInput(f"'versions' must be an object of at most {MAX_HELD} name: [ids]")
    for name, ids in versions.items():
        check_segment(name, "secret name in 'versions'")
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
    for name, version_id in held.items():
        check_segment(name, f"secret name in {field_name}")
        if not isinstance(version_id, str) or not 0 < len(version_id) <= 128:
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
