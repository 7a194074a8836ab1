"""``POST /v1/watch`` (long poll), ``GET /v1/adoption/{path}`` and forgetting an instance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
from aiohttp import web

from kmsd.domain.adoption import STALE_AFTER_HOLDS, InstanceReport, summarise
from kmsd.domain.names import NodePath
from kmsd.domain.watch import (
    WATCH_FIELDS,
    WATCH_MAX_BODY,
    check_instance_id,
    parse_timeout,
    parse_watch,
)
from kmsd.errors import InvalidInput, NotFound, ReportsUnknown
from kmsd.http.access import authorize
from kmsd.http.audit import audit_now
from kmsd.http.common import (
    AUDIT_TARGET,
    CLIENT_IP,
    TOKEN_KEY,
    json_body,
    json_response,
    principal,
)
from kmsd.hub.adoption import FORGET, ROWS_OF_PATH, Report
from kmsd.hub.hub import TIMEOUT, Snapshot
from kmsd.hub.index import Waiter
from kmsd.keys import ADOPTION, CLOCK, HUB, POLL_QUOTA, POOL, SETTINGS


async def watch(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    hold = parse_timeout(
        request.query.get("timeout"),
        default=settings.watch_default_hold_s,
        maximum=settings.watch_max_hold_s,
    )
    path, version = await _take_reports(request)
    hub = request.app[HUB]
    with request.app[POLL_QUOTA].hold(request[TOKEN_KEY]):
        parked = await hub.park(path, version, hub.jittered(hold) if hold else 0.0)
        if isinstance(parked, Waiter):
            try:
                outcome = await parked.handle
            finally:
                hub.release(parked)
        else:
            outcome = parked
    if outcome is TIMEOUT:
        return web.Response(status=304)
    if not isinstance(outcome, Snapshot):
        raise NotFound(f"node {str(path)!r} was deleted")
    return web.Response(body=outcome.body, content_type="application/json")


async def _take_reports(request: web.Request) -> tuple[NodePath, int]:
    """Admit a watch and hand its reports to the adoption buffer; return what to wait on.

    Only the path and version outlive this call: a full report can be megabytes, and the
    poll is then held for minutes.
    """
    who = principal(request)
    doc = await json_body(request, allowed=WATCH_FIELDS, max_size=WATCH_MAX_BODY)
    req = parse_watch(doc)
    request[AUDIT_TARGET] = str(req.path)
    await authorize(request, "read", str(req.path))
    if await request.app[HUB].snapshot(req.path) is None:
        raise NotFound(f"node {str(req.path)!r} does not exist")
    buffer = request.app[ADOPTION]
    if not req.reports_sent and not await buffer.holds(
        str(req.path), req.instance_id, who.arn, req.reports_digest
    ):
        raise ReportsUnknown(
            "kmsd does not hold the reports of this 'reports_digest' for this instance; "
            "send held, versions and processes in full"
        )
    await audit_now(request)  # before the hold: waking a fleet never waits on the trail
    buffer.report(
        Report(
            path=str(req.path),
            instance_id=req.instance_id,
            principal=who.arn,
            ip=request[CLIENT_IP],
            app_process_ids=req.app_process_ids,
            held=req.held,
            path_version=req.path_version,
            seen_at=request.app[CLOCK].now(),
            processes=req.processes,
            versions=req.versions,
            role=req.role,
            digest=req.reports_digest,
            full=req.reports_sent,
        )
    )
    return req.path, req.path_version


@dataclass(frozen=True)
class Adoption:
    """A node's adoption: the answer, and the reports and effective secrets it was made of."""

    doc: dict[str, Any]  # what GET /v1/adoption/{path} answers
    reports: list[InstanceReport]
    secrets: list[dict[str, Any]]  # the node's effective secrets, as its snapshot has them


async def adoption_of(app: web.Application, path: NodePath) -> Adoption | None:
    """``path``'s adoption from the reports in the database (None: no such node).

    Flush the adoption buffer first for this replica's latest reports too.
    """
    snap = await app[HUB].snapshot(path)
    if snap is None:
        return None
    rows = await app[POOL].fetch(ROWS_OF_PATH, str(path))
    reports = [
        InstanceReport(
            instance_id=r["instance_id"],
            principal=r["principal"],
            ip=r["ip"],
            app_process_ids=tuple(r["app_process_ids"]),
            held=orjson.loads(r["held"]),
            processes=orjson.loads(r["processes"]),
            path_version=r["path_version"],
            replica=r["replica"],
            last_seen=r["last_seen"],
            role=r["role"],
        )
        for r in rows
    ]
    secrets = orjson.loads(snap.body)["secrets"]
    doc = summarise(
        str(path),
        reports,
        secrets,
        now=app[CLOCK].now(),
        stale_after=timedelta(seconds=STALE_AFTER_HOLDS * app[SETTINGS].watch_max_hold_s),
    )
    return Adoption(doc, reports, secrets)


async def adoption(request: web.Request) -> web.Response:
    path = NodePath.parse(request.match_info["path"])
    await authorize(request, "view", str(path))
    await request.app[ADOPTION].flush()  # this replica's latest reports, then everyone's
    found = await adoption_of(request.app, path)
    if found is None:
        raise NotFound(f"node {str(path)!r} does not exist")
    return json_response(found.doc)


async def forget_instance(request: web.Request) -> web.Response:
    """``DELETE /v1/adoption/{path}?instance=ID``: forget an instance that is gone.

    A rotation gate waits for every live serving instance; one that died without a goodbye
    would hold the gate until it goes stale. Forgetting it (audited, ``rotate`` on the path)
    lets the gate go on. An instance still polling simply reports again.
    """
    path = NodePath.parse(request.match_info["path"])
    instance = request.query.get("instance", "")
    if not instance:
        raise InvalidInput("give the instance to forget: ?instance=ID (see kmsctl adoption PATH)")
    check_instance_id(instance, "'instance'")
    request[AUDIT_TARGET] = f"{path} instance {instance}"
    await authorize(request, "rotate", str(path))
    request.app[ADOPTION].forget(str(path), instance)
    if await request.app[POOL].fetchval(FORGET, str(path), instance) is None:
        raise NotFound(f"no instance {instance!r} has reported on {str(path)!r}")
    return json_response({"path": str(path), "instance_id": instance, "forgotten": True})
