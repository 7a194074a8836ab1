"""Owning background tasks: every task kmsd starts is cancelled and awaited on shutdown."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_quietly(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to finish, swallowing only its cancellation."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
