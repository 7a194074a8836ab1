"""kmsd.domain stays pure: importing it pulls in no network or database library."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("aiohttp", "asyncpg", "aiobotocore", "botocore")

PROBE = """
import importlib, json, pkgutil, sys
import kmsd.domain
names = sorted(m.name for m in pkgutil.walk_packages(kmsd.domain.__path__, "kmsd.domain."))
for name in names:
    importlib.import_module(name)
forbidden = sorted(
    m for m in sys.modules if m.split(".")[0] in {"aiohttp", "asyncpg", "aiobotocore", "botocore"}
)
print(json.dumps({"modules": names, "forbidden": forbidden}))
"""


def test_domain_imports_no_io_libraries() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    # The walk must have found the modules, or the check proves nothing.
    assert {"kmsd.domain.names", "kmsd.domain.tree", "kmsd.domain.signin"} <= set(result["modules"])
    assert result["forbidden"] == []
    assert set(FORBIDDEN) == {"aiohttp", "asyncpg", "aiobotocore", "botocore"}
