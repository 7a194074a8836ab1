"""Where kmsagent's memory goes before it holds any secret: RSS after each start-up step.

Run by ``agent.py`` as ``python _agent_rss.py`` (AWS_ENDPOINT_URL set; no call is made). Prints
one JSON object: VmRSS, RssAnon and RssFile (KiB) of this process after the interpreter
started, after importing what ``kmsagent run`` imports, after opening a
``kmsagent.aws.Reader`` (the clients it opens at start), after the KMS client a first data
key would add, and after glibc's ``malloc_trim(0)`` (heap freed but not yet given back). The
imports step also says how many modules are loaded and whether ``rich`` is among them
(structlog imports it when it is installed, as in the dev venv; a ``kmsd[agent]`` install has
none). Run with a venv's own python to see that venv's figures.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import re
import sys
from pathlib import Path
from typing import Any


def status() -> dict[str, int]:
    found = dict(re.findall(r"^(\w+):\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M))
    return {
        "rss_kib": int(found["VmRSS"]),
        "anon_kib": int(found["RssAnon"]),
        "file_kib": int(found["RssFile"]),
    }


async def clients(steps: dict[str, Any]) -> None:
    from aiobotocore.session import AioSession

    from kmsagent.aws import CLIENT_CONFIG, Reader

    session = AioSession()
    async with Reader(session, "us-east-1"):
        steps["reader"] = status()
        keys = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
        async with session.create_client(
            "kms", region_name="us-east-1", config=CLIENT_CONFIG, **keys
        ):
            steps["kms_client"] = status()
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            steps["malloc_trim"] = status()


def main() -> None:
    steps: dict[str, Any] = {"interpreter": status()}
    import kmsagent.api
    import kmsagent.cli  # noqa: F401 - what ``kmsagent run`` loads

    steps["imports"] = {**status(), "modules": len(sys.modules), "rich": "rich" in sys.modules}
    asyncio.run(clients(steps))
    print(json.dumps(steps))


if __name__ == "__main__":
    main()
