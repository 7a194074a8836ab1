"""Typed application keys: every shared object of the app, declared once."""

from __future__ import annotations

import aiohttp
import asyncpg
from aiohttp import web

from kmsd.aws.sm import SecretsWriter
from kmsd.config import Settings
from kmsd.metrics import Metrics

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
SM = web.AppKey("sm", SecretsWriter)
HTTP = web.AppKey("http", aiohttp.ClientSession)
METRICS = web.AppKey("metrics", Metrics)
