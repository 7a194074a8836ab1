"""kmsd builds AWS clients in one place only (kmsd/aws/clients.py), where they are guarded."""

from __future__ import annotations

import re
from pathlib import Path

KMSD = Path(__file__).resolve().parents[2] / "kmsd"
CLIENT_FACTORIES = re.compile(r"create_client\(|boto3\.(client|resource|Session)\(")
# kmsd dev creates its own IAM users in the local moto server (dev identities, never AWS).
EXEMPT = {KMSD / "aws" / "clients.py", KMSD / "cli" / "dev.py"}


def test_only_the_guarded_factory_creates_aws_clients() -> None:
    offenders = [
        f"{path.relative_to(KMSD.parent)}:{n}"
        for path in sorted(KMSD.rglob("*.py"))
        if path not in EXEMPT
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if CLIENT_FACTORIES.search(line)
    ]
    assert offenders == []


def test_the_scan_would_see_a_client() -> None:
    assert CLIENT_FACTORIES.search('async with session.create_client("kms") as kms:')
    assert CLIENT_FACTORIES.search('boto3.client("secretsmanager")')


def test_kmsd_never_imports_the_agent() -> None:
    """The agent reads values; kmsd must not be able to, not even through an import."""
    offenders = [
        f"{path.relative_to(KMSD.parent)}:{n}"
        for path in sorted(KMSD.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.match(r"\s*(from|import)\s+kmsagent\b", line)
    ]
    assert offenders == []
