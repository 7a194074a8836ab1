"""Where kmsagent's memory goes before it holds any secret: RSS after each start-up step.

Run by ``agent.py`` as ``python _agent_rss.py`` (AWS_ENDPOINT_URL set; no call is made). Prints
one JSON object: VmRSS, RssAnon and RssFile (KiB) of this process after the interpreter
started, after importing what ``kmsagent run`` imports, and after opening each of the two
clients ``kmsagent.aws.Reader`` opens (Secrets Manager, then KMS).
"""

from __future__ import annotations

import asyncio
import json
import re
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

    from kmsagent.aws import CLIENT_CONFIG

    session = AioSession()
    keys = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
    async with session.create_client(
        "secretsmanager", region_name="us-east-1", config=CLIENT_CONFIG, **keys
    ):
        steps["secretsmanager_client"] = status()
        async with session.create_client(
            "kms", region_name="us-east-1", config=CLIENT_CONFIG, **keys
        ):
            steps["kms_client"] = status()


def main() -> None:
    steps: dict[str, Any] = {"interpreter": status()}
    import kmsagent.api
    import kmsagent.cli  # noqa: F401 - what ``kmsagent run`` loads

    steps["imports"] = status()
    asyncio.run(clients(steps))
    print(json.dumps(steps))


if __name__ == "__main__":
    main()
