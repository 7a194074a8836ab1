"""The agent as shipped: a fresh virtualenv with ``pip install 'kmsd[agent]'`` of this checkout.

The dev venv also holds the test dependencies, and some change the agent: structlog imports
``rich`` when it is installed (schemathesis brings it), about 3 MiB that a host installing
``kmsd[agent]`` (or Dockerfile.agent) does not load. Memory figures come from this venv; the
dev venv's are reported beside them, labelled. tests/e2e/test_lean_install.py builds it alike.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def lean_venv(dest: Path) -> Path:
    """Create the venv at ``dest`` and install the agent into it; its ``bin`` folder."""
    log = dest.parent / f"{dest.name}.log"
    with log.open("w") as sink:
        for argv in (
            [sys.executable, "-m", "venv", str(dest)],
            [str(dest / "bin" / "pip"), "install", "--quiet", f"{REPO}[agent]"],
        ):
            done = subprocess.run(
                argv, check=False, stdout=sink, stderr=subprocess.STDOUT, timeout=600
            )
            if done.returncode != 0:
                raise RuntimeError(f"{argv[0]} failed ({done.returncode}); see {log}")
    return dest / "bin"


def describe(bin_dir: Path, took_s: float) -> dict[str, Any]:
    """What the lean venv holds that matters to its memory, for the JSON."""
    probe = "import importlib.util as u; print(u.find_spec('rich') is not None)"
    has_rich = subprocess.run(
        [str(bin_dir / "python"), "-c", probe],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    return {
        "install": f"pip install '{REPO}[agent]' in a fresh venv",
        "venv": str(bin_dir.parent),
        "build_s": round(took_s, 1),
        "rich_installed": has_rich == "True",
    }


def env_for(bin_dir: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` for a process of ``bin_dir``: a lean install's never sees PYTHONPATH (a checkout
    on it would be imported instead of what pip installed)."""
    if bin_dir.resolve() == Path(sys.executable).parent.resolve():
        return env
    return {k: v for k, v in env.items() if k != "PYTHONPATH"}


def build(dest: Path) -> tuple[Path, dict[str, Any]]:
    """``lean_venv`` and its description."""
    started = time.monotonic()
    bin_dir = lean_venv(dest)
    return bin_dir, describe(bin_dir, time.monotonic() - started)
