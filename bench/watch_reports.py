"""What a watch's reports cost: a full report of N secrets, and the digest that replaces it.

For N = 1,500 and 10,000 secrets (current and previous version each, and one application
process that read every secret, as ``GET /v1/secrets`` does), against ``kmsd dev``:
- the body sizes (full; digest alone);
- kmsd's parse of the full body in this process (orjson, the depth and NUL checks, then
  ``parse_watch`` with its digest), and kmsagent's ``watch_body`` (its digest);
- ``POST /v1/watch?timeout=0`` round trips, full and by digest (p50 of ROUNDS, sequential);
- the adoption flush of one such report into the dev PostgreSQL (the upsert), and of one
  digest poll (the liveness update), through kmsd's own ``AdoptionBuffer``.
Also the worst body the watch limit lets through (12 MiB of one-letter reads), parsed.

Usage: python bench/watch_reports.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dev import Dev, login_body

from kmsagent.reports import watch_body
from kmsd.domain.inputs import check_depth
from kmsd.domain.watch import WATCH_MAX_BODY, parse_watch
from kmsd.http.common import _nul_at
from kmsd.hub.adoption import AdoptionBuffer, Report
from kmsd.metrics import Metrics

PATH = "bench/big"
SIZES = (1500, 10_000)


def reports(n: int) -> dict[str, Any]:
    held = {f"secret-{i:05d}": f"{i:08x}-2d1b-4c8e-9a7f-5b4d3c2e1f0a" for i in range(n)}
    return {
        "held": held,
        "versions": {name: [vid, f"{vid[:-4]}ffff"] for name, vid in held.items()},
        "processes": {"4242": dict(held)},
    }


def parse_like_kmsd(raw: bytes) -> Any:
    doc = orjson.loads(raw)
    check_depth(doc)
    assert _nul_at(doc, "body") is None
    return parse_watch(doc)


def timed_ms(fn: Any, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return round(statistics.median(samples) * 1000, 2)


async def http_rounds(
    http: aiohttp.ClientSession, addr: str, headers: dict[str, str], body: bytes, rounds: int
) -> float:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        async with http.post(
            f"{addr}/v1/watch?timeout=0", data=io.BytesIO(body), headers=headers
        ) as resp:
            await resp.read()
            assert resp.status in (200, 304), resp.status
        samples.append(time.perf_counter() - t0)
    return round(statistics.median(samples) * 1000, 2)


async def flush_ms(pool: asyncpg.Pool, doc: dict[str, Any], rounds: int) -> tuple[float, float]:
    """Median flush of one full report, then of one digest poll of it (a row of their own)."""
    buffer = AdoptionBuffer(pool, "bench", Metrics())
    req = parse_watch(doc)
    full, touch = [], []
    seen = datetime.now(UTC)
    for i in range(rounds):
        seen += timedelta(seconds=1)
        report = Report(
            PATH,
            "i-bench",
            "bench",
            "127.0.0.1",
            req.app_process_ids,
            req.held,
            i,
            seen,
            processes=req.processes,
            versions=req.versions,
            digest=req.reports_digest,
        )
        buffer.report(report)
        t0 = time.perf_counter()
        assert await buffer.flush() == 1
        full.append(time.perf_counter() - t0)
        seen += timedelta(seconds=1)
        buffer.report(
            Report(
                PATH,
                "i-bench",
                "bench",
                "127.0.0.1",
                (),
                {},
                i,
                seen,
                digest=req.reports_digest,
                full=False,
            )
        )
        t0 = time.perf_counter()
        assert await buffer.flush() == 1
        touch.append(time.perf_counter() - t0)
    return (
        round(statistics.median(full) * 1000, 2),
        round(statistics.median(touch) * 1000, 2),
    )


async def run(dev: Dev, rounds: int) -> dict[str, Any]:
    addr = f"http://127.0.0.1:{dev.port}"
    out: dict[str, Any] = {}
    pool = await asyncpg.create_pool(
        f"postgresql://postgres:@/postgres?host={dev.data_dir / 'pg'}", min_size=1, max_size=2
    )
    async with aiohttp.ClientSession() as http, pool:
        async with http.post(f"{addr}/v1/auth/aws/login", json=login_body(dev.env)) as resp:
            token = (await resp.json())["token"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with http.put(f"{addr}/v1/nodes/{PATH}?parents=true", headers=headers) as resp:
            assert resp.status in (200, 201)
        for n in SIZES:
            full = {"path": PATH, "path_version": 0, "instance_id": f"i-{n}", **reports(n)}
            raw_full = orjson.dumps(full)
            digest_body, _ = watch_body(full, watch_body(full, None)[1])
            raw_digest = orjson.dumps(digest_body)
            http_full = await http_rounds(http, addr, headers, raw_full, rounds)
            http_digest = await http_rounds(http, addr, headers, raw_digest, rounds)
            flush_full, flush_touch = await flush_ms(pool, full, rounds)
            out[str(n)] = {
                "full_bytes": len(raw_full),
                "digest_bytes": len(raw_digest),
                "kmsd_parse_ms": timed_ms(lambda raw=raw_full: parse_like_kmsd(raw), rounds),
                "agent_digest_ms": timed_ms(lambda doc=full: watch_body(doc, None), rounds),
                "http_full_p50_ms": http_full,
                "http_digest_p50_ms": http_digest,
                "flush_full_ms": flush_full,
                "flush_digest_ms": flush_touch,
            }
    return out


def worst_parse_ms() -> tuple[int, float]:
    """The most entries the 12 MiB limit lets through: one-letter reads of 1,024 processes."""
    per = (WATCH_MAX_BODY - 4096) // 1024 // 12  # '"a123":"v",' is about 12 bytes
    doc = {
        "path": PATH,
        "instance_id": "i-worst",
        "processes": {f"p{p}": {f"a{i}": "v" for i in range(per)} for p in range(1024)},
    }
    raw = orjson.dumps(doc)
    assert len(raw) <= WATCH_MAX_BODY, len(raw)
    return len(raw), timed_ms(lambda: parse_like_kmsd(raw), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    dev = Dev()
    try:
        sizes = asyncio.run(run(dev, args.rounds))
    finally:
        dev.stop()
    worst_bytes, worst_ms = worst_parse_ms()
    result = {
        "bench": "watch_reports",
        "rounds": args.rounds,
        "secrets": sizes,
        "worst_body_bytes": worst_bytes,
        "worst_body_parse_ms": worst_ms,
    }
    print(json.dumps(result))
    parts = [
        f"{n} secrets: full {d['full_bytes'] / 1024:.0f} KiB, parse {d['kmsd_parse_ms']} ms, "
        f"flush {d['flush_full_ms']} ms, POST p50 {d['http_full_p50_ms']} ms; digest "
        f"{d['digest_bytes']} B, POST p50 {d['http_digest_p50_ms']} ms, "
        f"flush {d['flush_digest_ms']} ms"
        for n, d in sizes.items()
    ]
    print("; ".join(parts) + f"; worst 12 MiB body parse {worst_ms} ms")


if __name__ == "__main__":
    main()
