"""The agent gives start-up's freed heap back once, when every path is served."""

from __future__ import annotations

import asyncio

from kmsagent import memory
from kmsagent.sync import Agent
from tests.unit.test_agent_api import agent, synced

__all__ = ["agent"]


def test_glibc_trims() -> None:
    assert memory.trim() is True  # this image runs glibc; musl would answer False


async def test_the_trim_waits_for_the_first_view(agent: Agent) -> None:
    trimming = asyncio.create_task(memory.trim_when_serving(agent))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not trimming.done()  # no view yet: start-up is still allocating
    synced(agent)
    await asyncio.wait_for(trimming, 5)
