"""kmsagent for unchanged applications: a put to an exec'd command running with the new
environment, a put to a rendered file, and the memory of the agent as shipped.

Starts ``kmsd dev`` in a fresh folder (``_dev.py``), an application ``prod/compat`` with 100
secrets of about 200 bytes, an IAM user in moto for the hosts (read binding, keys in a 0600
credentials file), and a lean venv with the agent as shipped (``_lean.py``: ``pip install
'kmsd[agent]'``, built while kmsd is set up, waited for before any measurement). Scenarios:

1. exec - ``kmsagent exec --restart-jitter 0 -- python child.py``: the child writes the value
   it got and ``time.monotonic_ns()`` once started; PUT returned -> the new child's line.
2. template - ``kmsagent run --template`` (5 templates of 20 secrets each): PUT returned ->
   the file holds the new value (``os.stat`` polled every 0.2 ms; the figure's resolution).
3. rss - from the lean venv, then from the dev venv (labelled): ``kmsagent run`` with the
   100 secrets and ``--sm-compat-port``, VmRSS once healthy and after RSS_READS reads (every
   fifth one all 100 secrets on the socket, the others one secret through the SM Agent API);
   ``kmsagent run`` with the 5 templates, VmRSS once rendered and after RSS_RENDERS changes.

Reads through the SM Agent API beside the socket API are measured by ``agent.py`` (its reads
scenario: load in its own process, the agent alone on a core, every round reported).

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
import _lean
from _agent_procs import mib, proc_status
from _dev import BIN, Dev, free_port, login_body

APP = "prod/compat"
SECRETS = 100
TOKEN = "bench-compat-token-0123456789abcdef"
TOKEN_HEADER = "X-Aws-Parameters-Secrets-Token"
RSS_READS = 500
RSS_RENDERS = 5
WAIT_S = 60.0


def memory(pid: int) -> dict[str, Any]:
    """VmRSS in MiB, and the KiB figures it comes from."""
    status = proc_status(pid)
    return {"rss_mib": mib(status["rss_kib"]), **status}


def holds(path: Path, text: str) -> bool:
    """``path`` exists and contains ``text``. Read on the loop, not in a thread: the file is
    small, and a thread hop would blur the 0.2 ms polling that times a render."""
    try:
        return text in path.read_text()
    except FileNotFoundError:
        return False


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

    def agent(
        self, command: str, name: str, *extra: str, bin_dir: Path = BIN
    ) -> subprocess.Popen[bytes]:
        argv = [
            str(bin_dir / "kmsagent"), command, "--path", APP,
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
        with (self.run_dir / f"{name}.log").open("w") as log:
            proc = subprocess.Popen(
                argv, env=_lean.env_for(bin_dir, env), stdout=log, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        self.procs.remove(proc)

    def template_specs(self, prefix: str) -> tuple[list[str], Path]:
        """``--template`` options for 5 templates of 20 secrets each; the first output file."""
        specs = []
        for n in range(5):
            src = self.run_dir / f"{prefix}{n}.tpl"
            src.write_text(
                "".join(
                    f"s{i}={{{{ secrets.s{i}.password }}}}\n" for i in range(n * 20, n * 20 + 20)
                )
            )
            specs += ["--template", f"{src}:{self.run_dir / f'{prefix}{n}.out'}"]
        return specs, self.run_dir / f"{prefix}0.out"

    async def changed_file(self, name: str, first: Path, value: str) -> None:
        """Put ``value`` as ``name``'s password and wait until ``first`` shows it."""

        await self.quiet()
        await self.put(name, {"user": "u1", "password": value})
        await until(lambda: self._has(first, f"{name}={value}"), f"{name} rendered", 0.0002)

    # -- 1. exec -------------------------------------------------------------------------------

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

    # -- 2. template ---------------------------------------------------------------------------

    async def templates(self) -> dict[str, Any]:
        specs, first = self.template_specs("t")
        sock = str(self.run_dir / "tpl.sock")
        self.agent("run", "templates", "--socket", sock, *specs)

        await until(lambda: self._has(first, "s0="), "the first render", 0.01)
        took = []
        for i in range(5 if self.quick else 20):
            value = f"tpl-{i}-" + "x" * 20
            await self.quiet()
            await self.put("s1", {"user": "u1", "password": value})
            put_returned = time.monotonic_ns()
            await until(lambda v=value: self._has(first, f"s1={v}"), f"render {i}", 0.0002)
            took.append((time.monotonic_ns() - put_returned) / 1e6)
        return {
            "put_to_file_ms": [round(t, 2) for t in took],
            "p50_ms": round(statistics.median(took), 2),
        }

    @staticmethod
    async def _has(path: Path, text: str) -> bool:
        return holds(path, text)

    # -- 3. rss --------------------------------------------------------------------------------

    async def rss(self, bin_dir: Path, label: str) -> dict[str, Any]:
        """The two agents' memory, from ``bin_dir``'s kmsagent."""
        return {
            "compat_100_secrets": await self._rss_compat(bin_dir, label),
            "templates_5": await self._rss_templates(bin_dir, label),
        }

    async def _rss_compat(self, bin_dir: Path, label: str) -> dict[str, Any]:
        sock, port = str(self.run_dir / f"rss-{label}.sock"), free_port()
        proc = self.agent(
            "run", f"rss-{label}", "--socket", sock, "--sm-compat-port", str(port), bin_dir=bin_dir
        )
        compat = f"http://127.0.0.1:{port}/secretsmanager/get?secretId="
        unix = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock))
        tcp = aiohttp.ClientSession(headers={TOKEN_HEADER: TOKEN})
        try:

            async def healthy() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"rss-{label} exited with {proc.returncode}")
                try:
                    async with unix.get("http://a/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await until(healthy, f"the {label} agent", 0.01)
            at_start = memory(proc.pid)
            for i in range(RSS_READS):
                # Every fifth read all 100 on the socket, the others one through the compat API.
                one = f"{compat}s{i % SECRETS}"
                http, url = (unix, "http://a/v1/secrets") if i % 5 == 0 else (tcp, one)
                async with http.get(url) as resp:
                    doc = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"rss-{label}: {url} answered {resp.status}: {doc}")
            after = memory(proc.pid)
        finally:
            await unix.close()
            await tcp.close()
            self.stop(proc)
        return {"healthy": at_start, "after_reads": {"reads": RSS_READS, **after}}

    async def _rss_templates(self, bin_dir: Path, label: str) -> dict[str, Any]:
        specs, first = self.template_specs(f"rss-{label}-")
        sock = str(self.run_dir / f"rss-tpl-{label}.sock")
        proc = self.agent("run", f"rss-tpl-{label}", "--socket", sock, *specs, bin_dir=bin_dir)
        try:
            await until(lambda: self._has(first, "s0="), f"the {label} agent's render", 0.01)
            rendered = memory(proc.pid)
            for i in range(RSS_RENDERS):
                await self.changed_file("s1", first, f"rss-{label}-{i}-" + "x" * 20)
            after = memory(proc.pid)
        finally:
            self.stop(proc)
        return {"rendered": rendered, "after_renders": {"renders": RSS_RENDERS, **after}}

    async def close(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)
        await self.http.close()


async def main(quick: bool) -> dict[str, Any]:
    dev = Dev()
    bench = Bench(dev, quick)
    lean = asyncio.create_task(asyncio.to_thread(_lean.build, dev.data_dir / "lean"))
    try:
        try:
            await bench.setup()
        finally:
            # Built while kmsd is set up; waited for before any measurement (pip takes a core).
            lean_bin, lean_venv = await lean
        return {
            "exec": await bench.exec_restart(),
            "template": await bench.templates(),
            "rss": {
                "lean_venv": lean_venv,
                "lean": await bench.rss(lean_bin, "lean"),
                "dev_venv": await bench.rss(BIN, "dev"),
            },
        }
    finally:
        await bench.close()
        dev.stop()


def summary(result: dict[str, Any]) -> str:
    rss = result["rss"]

    def mibs(label: str) -> str:
        compat, tpl = rss[label]["compat_100_secrets"], rss[label]["templates_5"]
        return (
            f"100 secrets + compat {compat['after_reads']['rss_mib']} MiB, 5 templates "
            f"{tpl['after_renders']['rss_mib']} MiB"
        )

    return (
        f"put->exec child p50 {result['exec']['p50_ms']} ms; put->file p50 "
        f"{result['template']['p50_ms']} ms; RSS as shipped (lean venv): {mibs('lean')}; "
        f"dev venv: {mibs('dev_venv')}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    result = asyncio.run(main(parser.parse_args().quick))
    print(json.dumps(result, indent=1))
    print(summary(result))
