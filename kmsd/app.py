"""The one wiring place: settings in, a ready aiohttp application out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import asyncpg
import structlog
from aiohttp import web

from kmsd.aws.clients import aws_client
from kmsd.aws.sm import secrets_writer
from kmsd.clock import Clock, SystemClock
from kmsd.config import Settings
from kmsd.db import bindings as bindings_db
from kmsd.db import sessions, signins
from kmsd.db.audit import AuditWriter
from kmsd.db.bindings import BindingsCache
from kmsd.db.migrate import migrate_at_start
from kmsd.db.sessions import SessionCache
from kmsd.domain.adoption import STALE_AFTER_HOLDS
from kmsd.domain.profile import load_profile
from kmsd.http import middleware
from kmsd.http.routes import setup_routes
from kmsd.hub import adoption as adoption_db
from kmsd.hub.adoption import AdoptionBuffer
from kmsd.hub.hub import Hub
from kmsd.hub.listener import Waker
from kmsd.hub.quota import PollQuota
from kmsd.keys import (
    ADOPTION,
    AUDIT,
    BINDINGS,
    CLOCK,
    HTTP,
    HUB,
    KMS,
    METRICS,
    POLL_QUOTA,
    POOL,
    PROFILE,
    ROTATIONS,
    SCHEDULER,
    SESSIONS,
    SETTINGS,
    SM,
    WAKER,
    WEBHOOK_KEYS,
)
from kmsd.metrics import Metrics
from kmsd.services import reconcile
from kmsd.services.leadership import Leadership
from kmsd.services.rotation import Rotations
from kmsd.services.scheduler import Scheduler
from kmsd.services.webhook_keys import WebhookKeys
from kmsd.tasks import cancel_quietly, supervise

log = structlog.get_logger(__name__)

# Bodies over 1 MiB are refused (413) before they are read; SM's own 64 KiB value limit is
# checked separately with a message of its own.
CLIENT_MAX_SIZE = 1024 * 1024


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    conn = await asyncpg.connect(settings.database_url)
    try:
        await migrate_at_start(conn)  # as a non-owner role: a read-only check
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=1,
        max_size=settings.db_pool_max,
        # Named so an operator (or a test) can tell kmsd's connections apart in pg_stat_activity.
        server_settings={"application_name": f"kmsd/{settings.replica_id}"},
    )
    app[POOL] = pool
    app[BINDINGS] = BindingsCache(pool)
    yield
    await pool.close()


async def _aws(app: web.Application) -> AsyncIterator[None]:
    async with (
        secrets_writer(app[SETTINGS]) as sm,
        aws_client("kms", app[SETTINGS]) as kms,
        aiohttp.ClientSession() as http,
    ):
        app[SM], app[KMS], app[HTTP] = sm, kms, http
        app[WEBHOOK_KEYS] = WebhookKeys(kms, app[SETTINGS].webhook_mac_key)
        yield


async def _reconciler(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    min_age = timedelta(seconds=settings.reconcile_min_age_s)

    async def loop() -> None:
        cursor = 0
        while True:
            try:
                await reconcile.reconcile(app[POOL], app[SM], min_age)
                app[METRICS].outbox_quarantined.set(
                    await app[POOL].fetchval(reconcile.QUARANTINED, reconcile.QUARANTINE_AFTER)
                )
                if app[SCHEDULER].leader:  # one replica sweeps SM's labels
                    cursor, _ = await reconcile.sweep_labels(app[POOL], app[SM], cursor)
                # Housekeeping rides along: expired sessions, forgotten adoption reports.
                await app[POOL].execute(sessions.PURGE_EXPIRED)
                await app[POOL].execute(signins.PURGE_EXPIRED)
                await app[POOL].execute(adoption_db.PRUNE, adoption_db.FORGET_AFTER)
            except Exception:
                log.exception("reconcile_failed")
            await asyncio.sleep(settings.reconcile_interval_s)

    task = asyncio.create_task(loop(), name="kmsd-reconciler")
    yield
    await cancel_quietly(task)


async def _audit(app: web.Application) -> AsyncIterator[None]:
    writer = AuditWriter(app[POOL])
    app[AUDIT] = writer
    task = asyncio.create_task(supervise("audit", writer.run), name="kmsd-audit-writer")
    yield
    await cancel_quietly(task)


async def _hub(app: web.Application) -> AsyncIterator[None]:
    settings, pool, metrics = app[SETTINGS], app[POOL], app[METRICS]
    hub = Hub(pool, app[CLOCK], metrics)
    waker = Waker(
        settings.database_url,
        pool,
        hub,
        app[CLOCK],
        metrics,
        invalidations={bindings_db.CHANNEL: app[BINDINGS].invalidate},
        replica=settings.replica_id,
        ping_s=settings.listen_ping_s,
        ping_timeout_s=settings.listen_ping_timeout_s,
    )
    await waker.start()
    adoption = AdoptionBuffer(pool, settings.replica_id, metrics)
    app[HUB], app[WAKER], app[ADOPTION] = hub, waker, adoption
    tasks = [
        asyncio.create_task(supervise("waker", waker.run), name="kmsd-waker"),
        asyncio.create_task(supervise("sweeper", hub.run_sweeper), name="kmsd-hub-sweeper"),
        asyncio.create_task(
            supervise("adoption", lambda: adoption.run(settings.adoption_flush_s)),
            name="kmsd-adoption",
        ),
    ]
    yield
    for task in tasks:
        await cancel_quietly(task)


async def _answer_held_polls(app: web.Application) -> None:
    """On shutdown, answer held polls at once (503 + Retry-After) instead of dropping them."""
    if HUB in app:
        app[HUB].close()


async def _scheduler(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    rotations = Rotations(
        app[POOL],
        app[SM],
        app[HUB],
        app[CLOCK],
        app[PROFILE],
        sm_prefix=settings.sm_prefix,
        stale_after=timedelta(seconds=STALE_AFTER_HOLDS * settings.watch_max_hold_s),
        http=app[HTTP],
        audit=app[AUDIT],
        replica=settings.replica_id,
        webhook_allowed=settings.webhook_allowed_cidrs,
        webhook_keys=app[WEBHOOK_KEYS],
        metrics=app[METRICS],
    )
    app[ROTATIONS] = rotations
    scheduler = Scheduler(
        leadership=Leadership(
            settings.database_url,
            settings.replica_id,
            app[METRICS],
            check_timeout_s=settings.listen_ping_timeout_s,
        ),
        pool=app[POOL],
        sm=app[SM],
        kms=app[KMS],
        profile=app[PROFILE],
        clock=app[CLOCK],
        metrics=app[METRICS],
        sm_prefix=settings.sm_prefix,
        replica=settings.replica_id,
        lead=timedelta(days=settings.rotation_lead_days),
        tick_s=settings.scheduler_tick_s,
        driver=rotations,
        driver_tick_s=settings.rotation_tick_s,
    )
    app[SCHEDULER] = scheduler
    task = asyncio.create_task(supervise("scheduler", scheduler.run), name="kmsd-scheduler")
    yield
    await cancel_quietly(task)


def create_app(
    settings: Settings, *, reconcile: bool = True, clock: Clock | None = None
) -> web.Application:
    """Build the kmsd application for ``settings``."""
    app = web.Application(
        client_max_size=CLIENT_MAX_SIZE,
        # Order: access_log outermost (resolves the client address, sees the final status
        # and duration); then outcome, which admits the call (global CIDR allowlist, bearer
        # auth with the token's IP binding, the attempt row of a change - all before the
        # handler can change anything), maps KmsError to problem+json and writes the audit
        # row of the final status. Two on purpose: every middleware frame stays alive for the
        # whole hold of a poll.
        middlewares=[middleware.access_log, middleware.outcome],
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[CLOCK] = clock or SystemClock()
    app[SESSIONS] = SessionCache()
    app[POLL_QUOTA] = PollQuota(settings.watch_max_per_token)
    app[PROFILE] = load_profile(settings.security_profile)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_aws)
    app.cleanup_ctx.append(_audit)
    app.cleanup_ctx.append(_hub)
    app.cleanup_ctx.append(_scheduler)
    app.on_shutdown.append(_answer_held_polls)
    if reconcile:
        app.cleanup_ctx.append(_reconciler)
    setup_routes(app)
    return app
