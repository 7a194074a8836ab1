"""Typed application keys: every shared object of the app, declared once."""

from __future__ import annotations

import aiohttp
import asyncpg
from aiohttp import web

from kmsd.aws.sm import SecretsWriter
from kmsd.clock import Clock
from kmsd.config import Settings
from kmsd.db.audit import AuditWriter
from kmsd.db.bindings import BindingsCache
from kmsd.db.sessions import SessionCache
from kmsd.domain.profile import Profile
from kmsd.hub.adoption import AdoptionBuffer
from kmsd.hub.hub import Hub
from kmsd.hub.listener import Waker
from kmsd.hub.quota import PollQuota
from kmsd.metrics import Metrics
from kmsd.services.rotation import Rotations
from kmsd.services.scheduler import Scheduler
from kmsd.services.webhook_keys import WebhookKeys

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
SM = web.AppKey("sm", SecretsWriter)
HTTP = web.AppKey("http", aiohttp.ClientSession)
METRICS = web.AppKey("metrics", Metrics)
CLOCK = web.AppKey("clock", Clock)
HUB = web.AppKey("hub", Hub)
WAKER = web.AppKey("waker", Waker)
POLL_QUOTA = web.AppKey("poll_quota", PollQuota)
ADOPTION = web.AppKey("adoption", AdoptionBuffer)
SESSIONS = web.AppKey("sessions", SessionCache)
AUDIT = web.AppKey("audit", AuditWriter)
BINDINGS = web.AppKey("bindings", BindingsCache)
PROFILE = web.AppKey("profile", Profile)
KMS = web.AppKey("kms", object)  # the guarded aiobotocore KMS client (untyped)
SCHEDULER = web.AppKey("scheduler", Scheduler)
ROTATIONS = web.AppKey("rotations", Rotations)
WEBHOOK_KEYS = web.AppKey("webhook_keys", WebhookKeys)
