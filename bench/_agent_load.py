"""Load generator for ``agent.py``: reads from kmsagent's Unix socket with aiohttp.

Runs in its own process (a ``ProcessPoolExecutor`` of one, pinned by ``pin``) so that the
agent and the client each have a core. Two shapes:

* ``closed`` - CONCURRENCY clients, each sending its next request when the last one answered;
* ``paced`` - requests started on a fixed schedule (RATE per second) whatever the answers do;
  each latency counts from the request's scheduled start, so queueing (in the client, the
  socket or the agent) is part of it and a stall is not hidden by fewer requests being sent.

Every answer must be a 200; anything else is counted in ``errors``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp

WARMUP_S = 1.0


def pin(cpus: set[int]) -> None:
    os.sched_setaffinity(0, cpus)


def _stats(latencies: list[float], elapsed: float, errors: int) -> dict[str, Any]:
    ordered = sorted(latencies)
    n = len(ordered)

    def pct(q: float) -> float:
        return round(ordered[min(n - 1, int(n * q))] * 1000, 3) if n else -1.0

    return {
        "requests": n,
        "errors": errors,
        "rps": round(n / elapsed, 1),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "max_ms": round(ordered[-1] * 1000, 3) if n else -1.0,
    }


async def _closed(socket: str, url: str, concurrency: int, duration_s: float) -> dict[str, Any]:
    connector = aiohttp.UnixConnector(path=socket, limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        latencies: list[float] = []
        errors = 0

        async def client(until: float, record: bool) -> None:
            nonlocal errors
            while time.monotonic() < until:
                t0 = time.perf_counter()
                async with http.get(url) as resp:
                    await resp.read()
                    ok = resp.status == 200
                if record:
                    latencies.append(time.perf_counter() - t0)
                    errors += not ok

        warm = time.monotonic() + WARMUP_S
        await asyncio.gather(*(client(warm, False) for _ in range(concurrency)))
        started = time.monotonic()
        until = started + duration_s
        await asyncio.gather(*(client(until, True) for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    return {"concurrency": concurrency, **_stats(latencies, elapsed, errors)}


async def _paced(socket: str, url: str, rate: float, duration_s: float) -> dict[str, Any]:
    connector = aiohttp.UnixConnector(path=socket, limit=0)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=connector) as http:
        latencies: list[float] = []
        errors = 0
        inflight: set[asyncio.Task[None]] = set()
        most = 0

        async def one(at: float) -> None:
            nonlocal errors
            async with http.get(url) as resp:
                await resp.read()
                errors += resp.status != 200
            latencies.append(loop.time() - at)

        # Warm the connections and the code paths, unrecorded.
        for _ in range(int(rate * WARMUP_S / 10)):
            async with http.get(url) as resp:
                await resp.read()
        started = loop.time() + 0.05
        total = int(rate * duration_s)
        for i in range(total):
            at = started + i / rate
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the schedule itself, not a wait for anything
            task = asyncio.create_task(one(at))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            most = max(most, len(inflight))
        await asyncio.gather(*inflight)
        elapsed = loop.time() - started
    return {"rate": rate, "max_inflight": most, **_stats(latencies, elapsed, errors)}


def closed(socket: str, url: str, concurrency: int, duration_s: float) -> dict[str, Any]:
    return asyncio.run(_closed(socket, url, concurrency, duration_s))


def paced(socket: str, url: str, rate: float, duration_s: float) -> dict[str, Any]:
    return asyncio.run(_paced(socket, url, rate, duration_s))
