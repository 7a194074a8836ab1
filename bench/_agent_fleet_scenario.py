"""Scenario 4 of ``agent.py``: 1,000 agents, one PUT, the time until every agent serves it.

``Fleet`` is the parent's side of the worker processes (``_agent_fleet.py``: 250 real
``kmsagent.sync.Agent``s each, own sign-in, cache and sync loop, no local API), one pipe and
one command at a time per worker. Per round, once kmsd holds every agent's poll and its
adoption report says every agent holds the current version, one PUT; each agent's time of
publishing the view with the new version (from then its local API would serve it) minus the
PUT's return. The agents read the new value from moto, which runs in the ``kmsd dev``
process: CPU per round is split by thread (kmsd's event loop is the main thread, moto's
server the others) and given for the fleet processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import time
from typing import Any

import _agent_fleet
from _agent_procs import WAIT_S, main_thread_cpu_s
from _agent_stack import APP, ROTATED, Stack, ms, value
from _longpoll_stack import cpu_s

FLEET_DEADLINE_S = 5.0  # the target: every agent serves a change within this


class Fleet:
    """Fleet worker processes (spawned: this process has threads) and their pipes."""

    def __init__(self, count: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes = []
        self.procs = []
        for wid in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_agent_fleet.main, args=(child, wid), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    async def call(self, wid: int, name: str, **kwargs: Any) -> Any:
        pipe = self.pipes[wid]
        await asyncio.to_thread(pipe.send, (name, kwargs))
        reply = await asyncio.to_thread(pipe.recv)
        if isinstance(reply, dict) and "error" in reply:
            raise RuntimeError(f"fleet worker {wid}: {reply['error']}")
        return reply

    async def each(self, name: str, kwargs: list[dict[str, Any]]) -> list[Any]:
        return list(
            await asyncio.gather(*(self.call(w, name, **kw) for w, kw in enumerate(kwargs)))
        )

    async def all(self, name: str, **kwargs: Any) -> list[Any]:
        return await self.each(name, [kwargs] * len(self.procs))

    def cpu_s(self) -> float:
        return sum(cpu_s(p.pid) for p in self.procs if p.pid is not None)

    def close(self) -> None:
        """Ask each worker to exit, then terminate stragglers (idempotent)."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("exit", {}))
        for proc in self.procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for pipe in self.pipes:
            pipe.close()
        self.procs, self.pipes = [], []


async def fleet_run(
    stack: Stack, fleet: Fleet, per_worker: int, rounds: int, starting: int
) -> dict[str, Any]:
    """Start ``per_worker`` agents in each of ``fleet``'s workers, then ``rounds`` changes."""
    workers = len(fleet.procs)
    n = workers * per_worker
    env = stack.env
    agent_env = {k: env[k] for k in ("KMSD_ADDR", "KMSD_SERVER_ID", "AWS_ENDPOINT_URL")}
    agent_env |= {
        "AWS_DEFAULT_REGION": env["AWS_DEFAULT_REGION"],
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    started = time.monotonic()
    replies = await fleet.each(
        "start",
        [
            {
                "count": per_worker,
                "path": APP,
                "secret": ROTATED,
                "env": agent_env,
                "creds_file": str(stack.run_dir / "host-credentials"),
                "log_file": str(stack.run_dir / f"fleet-{w}.log"),
                "starting": starting,
                "deadline_s": stack.deadline.left(150),
            }
            for w in range(workers)
        ],
    )
    synced = sum(r["synced"] for r in replies)
    if synced != n:
        status = await fleet.all("status")
        raise RuntimeError(f"fleet: {synced} of {n} agents synced: {status}")
    start_s = round(time.monotonic() - started, 1)
    done = [await _round(stack, fleet, n, k) for k in range(rounds)]
    status = await fleet.all("status")
    worst = max(done, key=lambda r: r["served"]["max_ms"])
    within = min(r["within_5s"] for r in done)
    return {
        "agents": n,
        "workers": workers,
        "start_s": start_s,
        "rounds": done,
        "worst_round": {
            "served_p50_ms": worst["served"]["p50_ms"],
            "served_p99_ms": worst["served"]["p99_ms"],
            "served_max_ms": worst["served"]["max_ms"],
            "within_5s": within,
        },
        "errors": sum(s["errors"] for s in status),
        "logins": sum(s["logins"] for s in status),
        "target": f"all {n} within {FLEET_DEADLINE_S:g} s",
        "met": within == n,
    }


async def _round(stack: Stack, fleet: Fleet, n: int, k: int) -> dict[str, Any]:
    await stack.until(lambda: stack.held_polls(n), f"{n} fleet polls held", 0.02)
    # The polls' adoption reports written (this call flushes them): all agents hold the
    # current version, by kmsd's own account.
    adoption = await stack.api("GET", f"/v1/adoption/{APP}")
    (secret,) = [s for s in adoption["secrets"] if s["name"] == ROTATED]
    holders = [v["instances"] for v in secret["versions"] if v["version_id"] == stack.rotated]
    holding = sum(1 for i in (holders or [[]])[0] if i.startswith("fleet-"))
    if holding != n:
        raise RuntimeError(f"round {k}: adoption shows {holding} of {n} agents up to date")
    dev = stack.dev.proc.pid
    cpu0 = (cpu_s(dev), main_thread_cpu_s(dev), fleet.cpu_s())
    sent = time.monotonic_ns()
    version_id = await stack.put(APP, ROTATED, value(100 + k))
    acked = time.monotonic_ns()
    replies = await fleet.all("wait", version_id=version_id, deadline_s=stack.deadline.left(WAIT_S))
    cpu = [
        round((b - a) * 1000)
        for a, b in zip(cpu0, (cpu_s(dev), main_thread_cpu_s(dev), fleet.cpu_s()), strict=True)
    ]
    times = [t for r in replies for t in r["times"]]
    if len(times) != n:
        raise RuntimeError(f"round {k}: {len(times)} of {n} agents served {version_id}")
    served = [(p - acked) / 1e6 for _, p in times]
    answered = [(a - acked) / 1e6 for a, _ in times if a]
    fetch = [(p - a) / 1e6 for a, p in times if a]
    return {
        "put_ms": round((acked - sent) / 1e6, 1),
        "served": {
            "p50_ms": ms(served, 0.5),
            "p99_ms": ms(served, 0.99),
            "max_ms": ms(served, 1),
            "max_from_put_sent_ms": round(max(served) + (acked - sent) / 1e6, 2),
        },
        "within_5s": sum(1 for s in served if s <= FLEET_DEADLINE_S * 1000),
        # The long poll's answer read by the agent (negative: before the PUT returned).
        "poll_answered": {
            "p50_ms": ms(answered, 0.5),
            "max_ms": ms(answered, 1),
            "max_from_put_sent_ms": round(max(answered) + (acked - sent) / 1e6, 2),
        },
        # Poll answered -> view published: the GetSecretValue from moto, and waiting for it.
        "answer_to_served": {"p50_ms": ms(fetch, 0.5), "max_ms": ms(fetch, 1)},
        # kmsd dev's main thread is kmsd's event loop; its other threads are moto's server.
        "cpu_ms": {"kmsd": cpu[1], "moto": cpu[0] - cpu[1], "fleet_workers": cpu[2]},
    }
