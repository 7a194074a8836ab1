"""Fixtures for end-to-end tests: an environment for real kmsd processes, two replicas."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REGION, SERVER_ID, Identity
from tests.e2e.harness import Replica


@pytest.fixture
def env(
    fresh_database: Any, moto_endpoint: str, admin: Identity, webhook_mac_key: str
) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("KMSD_")},
        "KMSD_DATABASE_URL": fresh_database(f"e2e_{uuid.uuid4().hex[:8]}"),
        "KMSD_SERVER_ID": SERVER_ID,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "KMSD_ADMINS": admin.arn,
        "KMSD_LOG_FORMAT": "json",
        "KMSD_WEBHOOK_MAC_KEY": webhook_mac_key,
    }


@pytest.fixture
def replicas(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    a = Replica(env, tmp_path)
    b = Replica(env, tmp_path)
    try:
        yield a, b
    finally:
        for r in (a, b):
            r.stop()


@pytest.fixture
def kmsd(env: dict[str, str], tmp_path: Path) -> Iterator[Replica]:
    """One ``kmsd serve`` replica."""
    replica = Replica(env, tmp_path)
    try:
        yield replica
    finally:
        replica.stop()
