"""Throughput and latency of ``GET /v1/effective`` against ``kmsd dev``.

Builds one application with REGIONS x CLUSTERS leaves and SECRETS secrets per level, then
reads random leaves with CONCURRENCY clients for DURATION seconds from this process (kmsd runs
in its own process). Also times the pure ``resolve()`` on the same shape.

Usage: python bench/effective.py [--duration 10] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dev import Dev, login_body

from kmsd.domain.tree import NodeSecrets, SecretMeta, SecretVersion, effective_document

REGIONS, CLUSTERS, SECRETS = 4, 5, 5


async def build(http: aiohttp.ClientSession, addr: str, headers: dict[str, str]) -> list[str]:
    leaves = []
    for r in range(REGIONS):
        for c in range(CLUSTERS):
            path = f"bench/app/r{r}/c{c}"
            async with http.put(f"{addr}/v1/nodes/{path}?parents=true", headers=headers) as resp:
                assert resp.status in (200, 201)
            leaves.append(path)
    levels = ["bench/app"] + [f"bench/app/r{r}" for r in range(REGIONS)] + leaves
    for level in levels:
        for s in range(SECRETS):
            body = {"kind": "json", "value": {"k": str(s)}}
            async with http.put(
                f"{addr}/v1/secrets/{level}/s{s}", json=body, headers=headers
            ) as resp:
                assert resp.status in (200, 201), await resp.text()
    return leaves


async def hammer(
    addr: str, env: dict[str, str], duration: float, concurrency: int
) -> dict[str, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        async with http.post(f"{addr}/v1/auth/aws/login", json=login_body(env)) as resp:
            token = (await resp.json())["token"]
        headers = {"Authorization": f"Bearer {token}"}
        leaves = await build(http, addr, headers)
        latencies: list[float] = []
        deadline = time.monotonic() + duration

        async def worker() -> None:
            while time.monotonic() < deadline:
                path = random.choice(leaves)
                t0 = time.perf_counter()
                async with http.get(f"{addr}/v1/effective/{path}", headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200
                latencies.append(time.perf_counter() - t0)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
    }


def pure_resolve_us() -> float:
    now = datetime.now(UTC)
    chain = [
        NodeSecrets(
            f"bench/app/{i}",
            tuple(
                SecretMeta(f"s{s}", "json", "arn", (SecretVersion("v", "current", now),))
                for s in range(SECRETS)
            ),
        )
        for i in range(3)
    ]
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        effective_document("bench/app/r0/c0", 1, chain)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    dev = Dev()
    try:
        http = asyncio.run(
            hammer(f"http://127.0.0.1:{dev.port}", dev.env, args.duration, args.concurrency)
        )
    finally:
        dev.stop()
    result = {
        "bench": "effective",
        "concurrency": args.concurrency,
        "secrets_per_set": SECRETS * 3,
        **http,
        "pure_resolve_us": round(pure_resolve_us(), 1),
    }
    print(json.dumps(result))
    print(
        f"GET /v1/effective: {result['rps']} req/s, p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms at concurrency {args.concurrency}; "
        f"pure resolve+render {result['pure_resolve_us']} us"
    )


if __name__ == "__main__":
    main()
