"""Generated requests against a real ``kmsd serve``: no server error, every refusal a problem.

schemathesis reads the OpenAPI document (``kmsd.http.openapi.build``) and sends each operation
bounded numbers of generated requests, valid and invalid, first signed in as an application
host (a read binding on one application, so most calls are refused), then as an admin. Every
answer must conform to the document (status, content type, schema) and every 4xx must be
``application/problem+json`` whose ``status`` is the HTTP status.

Kept out of the run: the console's event stream (it stays open for the whole rotation). The
long poll is sent ``timeout=0`` whenever its timeout would otherwise be valid, so it never
holds; a webhook URL that kmsd would accept is replaced by one to a closed loopback port, so
kmsd never resolves or calls an outside host.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import CheckContext, not_a_server_error, positive_data_acceptance
from schemathesis.core.failures import Failure

from kmsd.errors import InvalidInput
from kmsd.http.openapi import build
from kmsd.http.rotations import webhook_url
from tests.conftest import REGION, SERVER_ID, Identity
from tests.e2e.harness import Replica, call, login

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HOST_APP = "prod/payments"
# Enough to reach every operation's validation paths; the whole run stays under two minutes.
EXAMPLES = 16
REQUEST_TIMEOUT_S = 10

# The bearer token of each caller, set by the ``kmsd`` fixture once it has signed them in.
TOKENS: dict[str, str] = {}
# What schemathesis puts where a token goes. Some cases are built at collection time, before
# anyone has signed in, so the real token is filled in just before the call.
PLACEHOLDER = "token-of-the-caller"


def _schema() -> Any:
    """The document, with the bearer token applied by schemathesis itself: a negative case that
    leaves the token out on purpose is then sent without one."""
    schema = schemathesis.openapi.from_dict(build()).exclude(
        path="/ui/rotations/{id}/events"  # an open event stream, not a request/answer
    )

    @schema.auth(refresh_interval=None)
    class Bearer:
        def get(self, case: Case, context: Any) -> str:
            return PLACEHOLDER

        def set(self, case: Case, data: str, context: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    return schema


HOST = _schema()
ADMIN = _schema()


@dataclass(frozen=True)
class Kmsd:
    addr: str


def _closed_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# What the document's examples name (kmsd/http/openapi.py), so that the first request of each
# operation reaches the handler's real work rather than a 404.
SEED_NODES = ("prod/payments/us-east-1", "prod/payments/eu-west-1", "prod/billing")
SEED_SECRETS = ("prod/payments/db", "prod/payments/api-key", "prod/payments/old-token")
SEED_CMK_ALIAS = "alias/payments"


def _seed_cmk(moto_endpoint: str) -> None:
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name=REGION)
    if SEED_CMK_ALIAS not in {a["AliasName"] for a in kms.list_aliases()["Aliases"]}:
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName=SEED_CMK_ALIAS, TargetKeyId=key)


@pytest.fixture(scope="module")
def kmsd(
    fresh_database: Any,
    moto_endpoint: str,
    admin: Identity,
    reader: Identity,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Kmsd]:
    """One replica for the whole module, the examples' objects, an admin and a bound host."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KMSD_")},
        "KMSD_DATABASE_URL": fresh_database(f"e2e_st_{uuid.uuid4().hex[:8]}"),
        "KMSD_SERVER_ID": SERVER_ID,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_DEFAULT_REGION": REGION,
        "KMSD_ADMINS": admin.arn,
        "KMSD_LOG_FORMAT": "json",
        "KMSD_SM_PREFIX": f"kmsd-st-{uuid.uuid4().hex[:8]}/",
        # Should a poll hold all the same, it holds a second, not 90.
        "KMSD_WATCH_DEFAULT_HOLD": "1",
        "KMSD_WATCH_MAX_HOLD": "1",
        # Webhooks may go to the closed loopback port the test substitutes (never outside).
        "KMSD_WEBHOOK_ALLOWED_CIDRS": "127.0.0.1/32",
    }
    _seed_cmk(moto_endpoint)
    replica = Replica(env, Path(tmp_path_factory.mktemp("schemathesis")))
    try:
        token = login(replica.addr, admin, moto_endpoint)
        for node in SEED_NODES:
            call(replica.addr, "PUT", f"/v1/nodes/{node}?parents=true", token=token)
        for ref in SEED_SECRETS:
            body = {"kind": "json", "value": {"seeded": ref}}
            call(replica.addr, "PUT", f"/v1/secrets/{ref}", body, token=token)
        grant = {"principal": reader.arn, "path": HOST_APP, "permission": "read"}
        call(replica.addr, "POST", "/v1/bindings", grant, token=token)
        TOKENS.update(admin=token, host=login(replica.addr, reader, moto_endpoint))
        yield Kmsd(replica.addr)
    finally:
        TOKENS.clear()
        code, log = replica.stop()
        assert code == 0, log[-4000:]
        # A 5xx answer is also logged as unhandled_error with its traceback: none is allowed.
        assert '"unhandled_error"' not in log, log[-8000:]


def _server_errors(ctx: CheckContext, response: Any, case: Case) -> bool | None:
    """No 5xx at all (a CMK KMS does not know is the caller's mistake: a 400)."""
    if response.status_code < 500:
        return None
    raise Failure(
        operation=case.operation.label,
        title="server error",
        message=f"{response.status_code}: {response.content[:500]!r}",
    )


def _problem_refusals(ctx: CheckContext, response: Any, case: Case) -> bool | None:
    """Every 4xx is application/problem+json with type, title, status (= the HTTP status)."""
    status = response.status_code
    if not 400 <= status < 500:
        return None
    headers = {k.lower(): v for k, v in response.headers.items()}
    media = headers.get("content-type", [""])
    media = (media[0] if isinstance(media, list) else media).split(";")[0].strip()
    if media != "application/problem+json":
        raise Failure(
            operation=case.operation.label,
            title="refusal is not application/problem+json",
            message=f"{status} answered with Content-Type {media!r}",
        )
    body = orjson.loads(response.content)
    missing = {"type", "title", "status", "detail"} - set(body)
    if missing or body["status"] != status:
        raise Failure(
            operation=case.operation.label,
            title="refusal is not an RFC 9457 problem of its status",
            message=f"{status}: missing {sorted(missing)}, status member {body.get('status')}",
        )
    return True


def _prepare(case: Case) -> None:
    """Keep the run local and short: no held poll, no webhook to an outside host."""
    path = case.operation.path
    if path == "/v1/watch":
        query = dict(case.query or {})
        raw = query.get("timeout")
        try:
            valid = raw is None or float(raw) >= 0
        except (TypeError, ValueError):
            valid = False
        if valid:
            query["timeout"] = 0  # a number, as the schema has it (schemathesis re-validates)
        case.query = query
    elif path == "/v1/webhooks/{path}" and isinstance(case.body, dict):
        try:
            webhook_url(case.body.get("url"))
        except InvalidInput:
            return  # refused before its host is resolved: sent as generated
        case.body = {**case.body, "url": f"http://127.0.0.1:{_closed_port()}/hook"}


def _check(case: Case, kmsd: Kmsd, who: str) -> None:
    if case.headers and case.headers.get("Authorization") == f"Bearer {PLACEHOLDER}":
        case.headers["Authorization"] = f"Bearer {TOKENS[who]}"
    _prepare(case)
    case.call_and_validate(
        base_url=kmsd.addr,
        additional_checks=[_server_errors, _problem_refusals],
        # Schema-valid is not always acceptable: a signed login's content, the security
        # profile, a CIDR's syntax and similar rules are the server's, not the schema's.
        # not_a_server_error is replaced by _server_errors.
        excluded_checks=[positive_data_acceptance, not_a_server_error],
        timeout=REQUEST_TIMEOUT_S,
    )


HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


# The host runs first: the admin's run may revoke bindings and delete the host's application.
@HOST.parametrize()
@HYPOTHESIS
def test_api_as_a_bound_host(case: Case, kmsd: Kmsd) -> None:
    _check(case, kmsd, "host")


@ADMIN.parametrize()
@HYPOTHESIS
def test_api_as_admin(case: Case, kmsd: Kmsd) -> None:
    _check(case, kmsd, "admin")


def test_the_served_document_is_the_one_tested(kmsd: Kmsd) -> None:
    answer = requests.get(kmsd.addr + "/v1/openapi.json", timeout=REQUEST_TIMEOUT_S)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json() == build()
