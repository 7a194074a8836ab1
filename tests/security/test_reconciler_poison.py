"""Class 4, reconciler poison: a time kmsd would choke on later is refused before any write.

``9999-12-31T23:59:59-14:00`` is year 10000 once in UTC: accepted once, it reached Secrets
Manager and then broke every reconcile pass that touched the row. Times a caller gives are
checked in one place (kmsd.domain.inputs.parse_expiry): a zone, in the future, within 100
years once in UTC. Each case puts a secret of its own with a hostile ``expires_at``: 400, and
neither Secrets Manager nor PostgreSQL has heard of that secret.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from tests.conftest import REGION
from tests.security.conftest import APP, Target
from tests.security.wire import Case, Req

KLASS = "4 reconciler poison"
FAR = (datetime.now(UTC) + timedelta(days=101 * 366)).isoformat()

EXPIRIES: dict[str, Any] = {
    "year-10000-in-utc": "9999-12-31T23:59:59-14:00",
    "year-9999-utc": "9999-12-31T23:59:59Z",
    "year-9999-plus-14": "9999-12-31T23:59:59+14:00",
    "year-1": "0001-01-01T00:00:00Z",
    "year-0-in-utc": "0001-01-01T00:00:00+14:00",
    "no-zone": "2031-01-01T00:00:00",
    "no-zone-date-only": "2031-01-01",
    "past": "2001-01-01T00:00:00Z",
    "epoch": "1970-01-01T00:00:00Z",
    "beyond-100-years": FAR,
    "offset-24h": "2031-01-01T00:00:00+24:00",
    "feb-30": "2031-02-30T00:00:00Z",
    "hour-24": "2031-01-01T24:00:00Z",
    "js-max-date": "+275760-09-13T00:00:00Z",
    "fullwidth-digits": "\uff12\uff10\uff13\uff11-01-01T00:00:00Z",
    "arabic-digits": "\u0662\u0660\u0663\u0661-01-01T00:00:00Z",
    "nul-after": "2031-01-01T00:00:00Z\u0000",
    "words": "tomorrow",
    "empty": "",
    "epoch-seconds-number": 1924992000,
    "float": 1.0e308,
    "list": ["2031-01-01T00:00:00Z"],
}


def put(name: str, expires_at: Any) -> Req:
    body = {"kind": "json", "value": {"k": "v"}, "expires_at": expires_at}
    return Req(
        "PUT", f"/v1/secrets/{APP}/{name}", headers=[("Authorization", "Bearer {api}")], body=body
    )


CASES = [Case(case, put(f"exp-{case}", when), 400) for case, when in EXPIRIES.items()]


def reached(target: Target, name: str) -> list[str]:
    """Where the secret ``name`` of APP exists: in Secrets Manager, in PostgreSQL."""
    sm = boto3.client("secretsmanager", endpoint_url=target.moto, region_name=REGION)
    pages = sm.get_paginator("list_secrets").paginate(
        Filters=[{"Key": "name", "Values": [target.sm_prefix]}]
    )
    found = [
        f"SM {s['Name']}" for page in pages for s in page["SecretList"] if s["Name"].endswith(name)
    ]
    rows = target.db("SELECT id FROM secrets WHERE name = $1", name)
    return found + [f"secrets row {r['id']}" for r in rows]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused(target: Target, case: Case) -> None:
    target.check(KLASS, case, after=lambda: reached(target, f"exp-{case.id}"))
