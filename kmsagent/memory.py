"""Giving start-up's freed heap back to the system once the agent is serving.

Importing aiohttp and botocore and loading the Secrets Manager service model allocates and
frees a few MiB that glibc's allocator keeps in its arenas: the agent would carry them for its
whole life. ``malloc_trim(0)`` returns the free pages (measured in bench/: about 2 MiB). Other
C libraries (musl) have no such call and nothing is done there.
"""

from __future__ import annotations

import asyncio
import ctypes

import structlog

from kmsagent.sync import Agent

log = structlog.get_logger("kmsagent")


def trim() -> bool:
    """Ask glibc to return free heap pages; False where the call does not exist."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    malloc_trim = getattr(libc, "malloc_trim", None)
    if malloc_trim is None:
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim(0)
    return True


async def trim_when_serving(agent: Agent) -> None:
    """Once every path has its first view (start-up's peak is over), trim once."""
    while any(s.view is None for s in agent.paths.values()):
        waits = [asyncio.ensure_future(s.changed.wait()) for s in agent.paths.values()]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
    log.debug("heap_trimmed", trimmed=trim())
