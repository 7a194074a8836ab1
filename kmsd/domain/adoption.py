"""Adoption summaries: which instance holds which version of which secret.

Input: the flushed reports of every replica for one path, the path's effective set, the time
and the staleness window. An instance not seen within the window is *stale*: listed and
counted apart, never silently treated as holding (or not holding) anything current.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

# Instances silent for this many maximum holds are reported stale: a live agent renews its poll
# at least once per hold, so three missed renewals mean it is gone (or cut off).
STALE_AFTER_HOLDS = 3


@dataclass(frozen=True, slots=True)
class InstanceReport:
    instance_id: str
    principal: str
    ip: str
    app_process_ids: tuple[str, ...]
    held: Mapping[str, str]
    path_version: int
    replica: str
    last_seen: datetime
    processes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    role: str = "serving"


def summarise(
    path: str,
    reports: Sequence[InstanceReport],
    effective_secrets: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
    stale_after: timedelta,
) -> dict[str, Any]:
    """Group serving instances by secret and version, with live and stale counts.

    Observers (``role`` observer: kmsctl watch, dashboards) hold nothing: they are listed apart
    and counted apart, never among the instances that hold a version.
    """
    observers = [r for r in reports if r.role == "observer"]
    reports = [r for r in reports if r.role != "observer"]
    stale = {r.instance_id: now - r.last_seen > stale_after for r in reports}
    stages = {
        (s["name"], v["version_id"]): v["stage"] for s in effective_secrets for v in s["versions"]
    }
    names = sorted({s["name"] for s in effective_secrets} | {n for r in reports for n in r.held})
    secrets = []
    for name in names:
        holders: dict[str, list[str]] = {}
        for r in reports:
            version = r.held.get(name)
            if version is not None:
                holders.setdefault(version, []).append(r.instance_id)
        versions = [
            {
                "version_id": version,
                "stage": stages.get((name, version)),
                "instances": sorted(ids),
                "count": len(ids),
                "live": sum(1 for i in ids if not stale[i]),
                "stale": sum(1 for i in ids if stale[i]),
            }
            for version, ids in sorted(holders.items())
        ]
        secrets.append({"name": name, "versions": versions})
    return {
        "path": path,
        "stale_after_s": int(stale_after.total_seconds()),
        "instances": [_row(r, now, stale_after) for r in reports],
        "observers": [_row(r, now, stale_after) for r in observers],
        "counts": {
            "instances": len(reports),
            "live": sum(1 for v in stale.values() if not v),
            "stale": sum(1 for v in stale.values() if v),
            "observers": len(observers),
        },
        "secrets": secrets,
    }


def _row(r: InstanceReport, now: datetime, stale_after: timedelta) -> dict[str, Any]:
    return {
        "instance_id": r.instance_id,
        "role": r.role,
        "principal": r.principal,
        "ip": r.ip,
        "app_process_ids": list(r.app_process_ids),
        "processes": {pid: dict(seen) for pid, seen in r.processes.items()},
        "path_version": r.path_version,
        "replica": r.replica,
        "last_seen": r.last_seen.isoformat(),
        "stale": now - r.last_seen > stale_after,
        "stale_at": (r.last_seen + stale_after).isoformat(),
    }
