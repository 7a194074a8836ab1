"""Load generator for ``agent.py``: reads from kmsagent with aiohttp, over its Unix socket or
over TCP on 127.0.0.1 with request headers (the SM Agent API's token), a ``Target`` each.

Runs in its own process (a ``ProcessPoolExecutor`` of one, pinned by ``pin``) so that the
agent and the client each have a core. Two shapes:

* ``closed`` - CONCURRENCY clients, each sending its next request when the last one answered;
* ``paced`` - requests started on a fixed schedule (RATE per second) whatever the answers do;
  each latency counts from the request's scheduled start, so queueing (in the client, the
  socket or the agent) is part of it and a stall is not hidden by fewer requests being sent.
  The schedule is kept by yielding to the loop until each start (``asyncio.sleep`` alone
  wakes up to 1 ms late: epoll's timeout is in milliseconds); ``start_lag`` reports how late
  requests started anyway.

Every answer must be a 200; anything else is counted in ``errors``. The client's own garbage
is frozen (``gc.freeze``) after the warm-up so its collections stay short.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

WARMUP_S = 1.0
PACED_CONNECTIONS = 32


@dataclass(frozen=True)
class Target:
    """What to read: ``url`` on the Unix socket ``socket``, or over TCP when it is empty."""

    url: str
    socket: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def session(self, limit: int) -> aiohttp.ClientSession:
        """A session of at most ``limit`` connections (0: no limit), sending ``headers``."""
        connector: aiohttp.BaseConnector = (
            aiohttp.UnixConnector(path=self.socket, limit=limit)
            if self.socket
            else aiohttp.TCPConnector(limit=limit)
        )
        return aiohttp.ClientSession(connector=connector, headers=self.headers)


def pin(cpus: set[int]) -> None:
    """Pool initializer: this process on ``cpus`` only."""
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


async def _closed(target: Target, concurrency: int, duration_s: float) -> dict[str, Any]:
    url = target.url
    async with target.session(0) as http:
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
        gc.collect()
        gc.freeze()
        started = time.monotonic()
        until = started + duration_s
        await asyncio.gather(*(client(until, True) for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    return {"concurrency": concurrency, **_stats(latencies, elapsed, errors)}


async def _paced(target: Target, rate: float, duration_s: float) -> dict[str, Any]:
    url = target.url
    loop = asyncio.get_running_loop()
    # A bounded pool, as an application has: when the agent falls behind, requests queue here
    # (their latency still counts from the schedule) instead of piling up connects on its
    # accept backlog.
    async with target.session(PACED_CONNECTIONS) as http:
        latencies: list[float] = []
        lags: list[float] = []
        errors = 0
        inflight: set[asyncio.Task[None]] = set()
        most = 0

        async def one(at: float) -> None:
            nonlocal errors
            lags.append(loop.time() - at)
            try:
                async with http.get(url) as resp:
                    await resp.read()
                    errors += resp.status != 200
            except aiohttp.ClientError:
                errors += 1
            latencies.append(loop.time() - at)

        # Warm the connections and the code paths, unrecorded.
        for _ in range(int(rate * WARMUP_S / 10)):
            async with http.get(url) as resp:
                await resp.read()
        gc.collect()
        gc.freeze()
        started = loop.time() + 0.05
        total = int(rate * duration_s)
        for i in range(total):
            at = started + i / rate
            # The schedule itself, not a wait for anything: sleep while far ahead, then yield
            # to the loop (answers get read) until the start time.
            while (ahead := at - loop.time()) > 0:  # noqa: ASYNC110 - pacing, not a condition
                await asyncio.sleep(ahead - 0.002 if ahead > 0.003 else 0)
            task = asyncio.create_task(one(at))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            most = max(most, len(inflight))
        await asyncio.gather(*inflight)
        elapsed = loop.time() - started
    lags.sort()
    return {
        "rate": rate,
        "max_inflight": most,
        **_stats(latencies, elapsed, errors),
        "start_lag_p99_ms": round(lags[int(len(lags) * 0.99)] * 1000, 3),
    }


def closed(target: Target, concurrency: float, duration_s: float) -> dict[str, Any]:
    """``concurrency`` clients, each sending its next request when the last one answered."""
    return asyncio.run(_closed(target, int(concurrency), duration_s))


def paced(target: Target, rate: float, duration_s: float) -> dict[str, Any]:
    """Requests started at ``rate`` per second; latency from each one's scheduled start."""
    return asyncio.run(_paced(target, rate, duration_s))
