"""Owning background tasks: every task kmsd starts is cancelled and awaited on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


async def cancel_quietly(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to finish, swallowing only its cancellation."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def supervise(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run ``run()`` forever: if it dies of anything but cancellation, restart it with backoff.

    A background loop that silently died (the waker, the audit writer) would leave a replica
    that answers health checks but never wakes a poll or writes an audit row.
    """
    delay = 0.1
    while True:
        try:
            await run()
            delay = 0.1
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background_task_died", task=name)
            await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - backoff jitter
            delay = min(delay * 2, 10.0)
