"""Time ``kmsd dev`` from spawn to ``kmsd ready``: first start (initdb) and restart.

Usage: python bench/dev_startup.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dev import Dev


def main() -> None:
    first = Dev()
    first.stop()
    again = Dev(first.data_dir)
    again.stop()
    shutil.rmtree(first.data_dir, ignore_errors=True)
    result = {
        "bench": "dev_startup",
        "first_start_s": round(first.ready_s, 2),
        "restart_s": round(again.ready_s, 2),
    }
    print(json.dumps(result))
    print(
        f"kmsd dev ready in {result['first_start_s']} s on a fresh folder, "
        f"{result['restart_s']} s on restart"
    )


if __name__ == "__main__":
    main()
