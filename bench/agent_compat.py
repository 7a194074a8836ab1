"""kmsagent for unchanged applications: the SM Agent API beside the socket API, a put to an
exec'd command running with the new environment, a put to a rendered file, memory.

Starts ``kmsd dev`` in a fresh folder (``_dev.py``), an application ``prod/compat`` with 100
secrets of about 200 bytes, an IAM user in moto for the hosts (read binding, keys in a 0600
credentials file). Scenarios:

1. reads - one ``kmsagent run`` with ``--sm-compat-port`` pinned to CPU 0, the load generator
   on CPU 1; in one run, alternating, ROUNDS rounds of each of: ``GET /v1/secrets/s0`` over the
   Unix socket and ``GET /secretsmanager/get?secretId=s0`` (with the token header) over
   127.0.0.1, closed loop (CONCURRENCY clients), then paced at PACED_RATE requests/s (latency
   from each request's scheduled start). Every round is reported.
2. exec - ``kmsagent exec --restart-jitter 0 -- python child.py``: the child writes the value
   it got and ``time.monotonic_ns()`` once started; PUT returned -> the new child's line.
3. template - ``kmsagent run --template``: PUT returned -> the file holds the new value
   (``os.stat`` polled every 0.2 ms; the figure's resolution).
4. rss - the agent of 1 (100 secrets, compat port) and one with 5 templates of the 100
   secrets, VmRSS once healthy and after renders.

Usage: python bench/agent_compat.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dev import BIN, Dev, free_port, login_body

APP = "prod/compat"
SECRETS = 100
PACED_RATE = 3000.0
CONCURRENCY = 8
TOKEN = "bench-compat-token-0123456789abcdef"
WAIT_S = 60.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


async def until(check: Any, what: str, every: float = 0.005) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(every)


class Bench:
    def __init__(self, dev: Dev, quick: bool) -> None:
        self.dev, self.env, self.quick = dev, dev.env, quick
        self.addr = self.env["KMSD_ADDR"]
        self.run_dir = dev.data_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(
            method, self.addr + path, json=body, headers={"Authorization": f"Bearer {self.token}"}
        ) as resp:
            doc = await resp.json()
            assert resp.status < 300, doc
            return doc

    async def held(self, n: int) -> bool:
        async with self.http.get(self.addr + "/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith("kmsd_watch_held_polls "):
                return float(line.split()[1]) >= n
        return False

    async def quiet(self) -> None:
        """Every live agent's poll held by kmsd: a change then travels at once (without this,
        back-to-back changes would meet an agent between polls, which start 0.5 s apart)."""
        live = sum(p.poll() is None for p in self.procs)
        await until(lambda: self.held(live), "every agent's poll to be held", 0.005)

    async def put(self, name: str, value: dict[str, Any]) -> str:
        doc = await self.api("PUT", f"/v1/secrets/{APP}/{name}", {"kind": "json", "value": value})
        return str(doc["version_id"])

    async def setup(self) -> None:
        self.http = aiohttp.ClientSession()
        async with self.http.post(self.addr + "/v1/auth/aws/login", json=login_body(self.env)) as r:
            self.token = (await r.json())["token"]
        await self.api("PUT", f"/v1/nodes/{APP}?parents=true")
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                await self.put(f"s{i}", {"user": f"u{i}", "password": "p" * 180})

        await asyncio.gather(*(one(i) for i in range(SECRETS)))
        iam = boto3.client(
            "iam",
            endpoint_url=self.env["AWS_ENDPOINT_URL"],
            region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )
        arn = iam.create_user(UserName="compat-hosts")["User"]["Arn"]
        key = iam.create_access_key(UserName="compat-hosts")["AccessKey"]
        self.creds = self.run_dir / "hosts-credentials"
        fd = os.open(self.creds, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(
                f"[default]\naws_access_key_id={key['AccessKeyId']}\n"
                f"aws_secret_access_key={key['SecretAccessKey']}\n"
            )
        await self.api(
            "POST", "/v1/bindings", {"principal": arn, "path": APP, "permission": "read"}
        )

    def agent(self, command: str, name: str, *extra: str, cpu: int | None = None) -> Any:
        argv = [
            str(BIN / "kmsagent"), command, "--path", APP,
            "--kmsd-addr", self.addr, "--server-id", self.env["KMSD_SERVER_ID"],
            "--credentials", "file", "--credentials-file", str(self.creds),
            "--instance-id", name, *extra,
        ]  # fmt: skip
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KMSD_"))},
            "AWS_ENDPOINT_URL": self.env["AWS_ENDPOINT_URL"],
            "AWS_DEFAULT_REGION": self.env["AWS_DEFAULT_REGION"],
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_TOKEN": TOKEN,
        }
        log = (self.run_dir / f"{name}.log").open("w")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        if cpu is not None:
            os.sched_setaffinity(proc.pid, {cpu})
        self.procs.append(proc)
        return proc

    # -- 1. reads ------------------------------------------------------------------------------

    async def reads(self) -> dict[str, Any]:
        sock, port = str(self.run_dir / "reads.sock"), free_port()
        proc = self.agent(
            "run", "reads", "--socket", str(sock), "--sm-compat-port", str(port), cpu=0
        )
        unix = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock, limit=64))
        tcp = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

        async def healthy() -> bool:
            try:
                async with unix.get("http://a/healthz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await until(healthy, "the reads agent", 0.05)
        shapes = {
            "socket": (unix, "http://a/v1/secrets/s0", {}),
            "compat": (
                tcp,
                f"http://127.0.0.1:{port}/secretsmanager/get?secretId=s0",
                {"X-Aws-Parameters-Secrets-Token": TOKEN},
            ),
        }
        os.sched_setaffinity(0, {1})
        rounds = 2 if self.quick else 4
        seconds = 2.0 if self.quick else 5.0
        out: dict[str, Any] = {name: {"closed": [], "paced": []} for name in shapes}
        for _ in range(rounds):
            for name, (http, url, headers) in shapes.items():
                out[name]["closed"].append(await closed(http, url, headers, seconds))
                out[name]["paced"].append(await paced(http, url, headers, seconds))
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        out["rss_mib_after_reads"] = rss_mib(proc.pid)
        await unix.close()
        await tcp.close()
        return out

    # -- 2. exec -------------------------------------------------------------------------------

    async def exec_restart(self) -> dict[str, Any]:
        notes = self.run_dir / "child.jsonl"
        child = self.run_dir / "child.py"
        child.write_text(
            "import json, os, time, signal, sys\n"
            f"with open({str(notes)!r}, 'a') as f:\n"
            "    f.write(json.dumps({'t': time.monotonic_ns(), 'v': os.environ['V']}) + '\\n')\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
            "signal.pause()\n"
        )
        self.agent(
            "exec", "exec", "--restart-jitter", "0", "--grace", "5", "--env", "V=s0.password",
            "--", sys.executable, str(child),
        )  # fmt: skip

        def lines() -> list[dict[str, Any]]:
            return [json.loads(x) for x in notes.read_text().splitlines()] if notes.exists() else []

        async def started(n: int) -> bool:
            return len(lines()) >= n

        await until(lambda: started(1), "the first child", 0.01)
        took = []
        for i in range(3 if self.quick else 10):
            value = f"exec-{i}"
            await self.quiet()
            await self.put("s0", {"user": "u0", "password": value})
            put_returned = time.monotonic_ns()
            await until(lambda n=i + 2: started(n), f"restart {i}", 0.001)
            line = lines()[i + 1]
            assert line["v"] == value, line
            took.append((line["t"] - put_returned) / 1e6)
        return {"put_to_new_child_ms": took, "p50_ms": round(statistics.median(took), 1)}

    # -- 3. template + 4. rss ------------------------------------------------------------------

    async def templates(self) -> dict[str, Any]:
        specs = []
        for n in range(5):
            src = self.run_dir / f"t{n}.tpl"
            src.write_text(
                "".join(
                    f"s{i}={{{{ secrets.s{i}.password }}}}\n" for i in range(n * 20, n * 20 + 20)
                )
            )
            specs += ["--template", f"{src}:{self.run_dir / f't{n}.out'}"]
        sock = str(self.run_dir / "tpl.sock")
        proc = self.agent("run", "templates", "--socket", sock, *specs)
        first = self.run_dir / "t0.out"

        async def rendered(text: str) -> bool:
            try:
                return text in first.read_text()
            except FileNotFoundError:
                return False

        await until(lambda: rendered("s0="), "the first render", 0.01)
        rss_healthy = rss_mib(proc.pid)
        took = []
        for i in range(5 if self.quick else 20):
            value = f"tpl-{i}-" + "x" * 20
            await self.quiet()
            await self.put("s1", {"user": "u1", "password": value})
            put_returned = time.monotonic_ns()
            await until(lambda v=value: rendered(f"s1={v}"), f"render {i}", 0.0002)
            took.append((time.monotonic_ns() - put_returned) / 1e6)
        return {
            "put_to_file_ms": [round(t, 2) for t in took],
            "p50_ms": round(statistics.median(took), 2),
            "rss_mib_5_templates": rss_mib(proc.pid),
            "rss_mib_5_templates_healthy": rss_healthy,
        }

    async def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        await self.http.close()


async def closed(http: Any, url: str, headers: dict[str, str], seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0

    async def client(until_t: float) -> None:
        nonlocal errors
        while time.monotonic() < until_t:
            t0 = time.perf_counter()
            async with http.get(url, headers=headers) as resp:
                await resp.read()
                errors += resp.status != 200
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(client(time.monotonic() + 0.5) for _ in range(CONCURRENCY)))
    latencies.clear()
    start = time.monotonic()
    await asyncio.gather(*(client(start + seconds) for _ in range(CONCURRENCY)))
    return _stats(latencies, time.monotonic() - start, errors)


async def paced(http: Any, url: str, headers: dict[str, str], seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    tasks = []

    async def one(at: float) -> None:
        nonlocal errors
        async with http.get(url, headers=headers) as resp:
            await resp.read()
            errors += resp.status != 200
        latencies.append(loop.time() - at)

    start = loop.time() + 0.05
    for i in range(int(PACED_RATE * seconds)):
        at = start + i / PACED_RATE
        while (ahead := at - loop.time()) > 0:  # noqa: ASYNC110 - pacing, not a condition
            await asyncio.sleep(ahead - 0.002 if ahead > 0.003 else 0)
        tasks.append(asyncio.create_task(one(at)))
    await asyncio.gather(*tasks)
    return {"rate": PACED_RATE, **_stats(latencies, loop.time() - start, errors)}


def _stats(latencies: list[float], elapsed: float, errors: int) -> dict[str, Any]:
    ordered = sorted(latencies)
    n = len(ordered)

    def pct(q: float) -> float:
        return round(ordered[min(n - 1, int(n * q))] * 1000, 3) if n else -1.0

    return {"requests": n, "errors": errors, "rps": round(n / elapsed, 1), "p50_ms": pct(0.5),
            "p99_ms": pct(0.99)}  # fmt: skip


async def main(quick: bool) -> dict[str, Any]:
    dev = Dev()
    bench = Bench(dev, quick)
    try:
        await bench.setup()
        return {
            "reads": await bench.reads(),
            "exec": await bench.exec_restart(),
            "template": await bench.templates(),
        }
    finally:
        await bench.close()
        dev.stop()


def summary(result: dict[str, Any]) -> str:
    reads = result["reads"]

    def worst(name: str, shape: str, key: str) -> float:
        return float(max(r[key] for r in reads[name][shape]))

    return (
        f"paced {PACED_RATE:.0f}/s p99 (worst round): socket {worst('socket', 'paced', 'p99_ms')}"
        f" ms, compat {worst('compat', 'paced', 'p99_ms')} ms; closed rps (worst): socket "
        f"{min(r['rps'] for r in reads['socket']['closed'])}, compat "
        f"{min(r['rps'] for r in reads['compat']['closed'])}; put->exec child p50 "
        f"{result['exec']['p50_ms']} ms; put->file p50 {result['template']['p50_ms']} ms; RSS "
        f"100 secrets {reads['rss_mib_after_reads']} MiB, +5 templates "
        f"{result['template']['rss_mib_5_templates']} MiB"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    result = asyncio.run(main(parser.parse_args().quick))
    print(json.dumps(result, indent=1))
    print(summary(result))
