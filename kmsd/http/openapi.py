"""``GET /v1/openapi.json``: the OpenAPI 3.1 document of kmsd's whole HTTP API.

Hand-maintained Python rather than a shipped JSON/YAML file: the document is built from the
same constants the handlers and ``kmsd.domain`` parsers validate with (the segment rule, depth,
permissions, stages, limits), so those cannot drift apart, and mypy and ruff read it like any
other module. What can still drift - a route added without documentation, or documentation of
a route that is gone - is caught by ``tests/unit/test_openapi.py``, which compares this
document's paths with ``app.router`` both ways; ``tests/e2e/test_schemathesis.py`` sends
generated requests to a real ``kmsd serve`` and checks the answers against it.

Tail parameters (``{path}``, ``{ref}``) span slashes (``/v1/nodes/prod/payments``): they are
documented as one path parameter, and the server accepts the slashes plain or as ``%2F``.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from aiohttp import web

from kmsd import __version__
from kmsd.domain.iam import DEFAULT_SHAPE as IAM_DEFAULT
from kmsd.domain.iam import SHAPES as IAM_SHAPES
from kmsd.domain.rotation import COMMANDS
from kmsd.http.console.openapi import console_paths
from kmsd.http.openapi_answers import ANSWERS, problem_responses
from kmsd.http.openapi_ops import (
    answer,
    flag,
    node_param,
    operation,
    param,
    secret_param,
    tail,
)
from kmsd.http.openapi_schemas import (
    APP_PATH,
    APPLICATION,
    INSTANCE_ID,
    NODE_PATH,
    REQUEST_SCHEMAS,
    SECRET_REF,
    Schema,
    ref,
)

OPENAPI_VERSION = "3.1.0"
SCHEMAS: dict[str, Schema] = {**REQUEST_SCHEMAS, **ANSWERS}
PATH = node_param("prod/payments/us-east-1")
APP = tail(
    "path",
    APP_PATH,
    "an application or a node below it: namespace/application[/...]",
    "prod/payments/us-east-1",
)
WEBHOOK_APP = tail("path", APPLICATION, "an application: namespace/application", "prod/payments")
SECRET = secret_param("prod/payments/db")
LOCAL = tail(
    "ref",
    SECRET_REF,
    "PATH/LOCAL_NAME: a node path, then the reference's name",
    "prod/billing/payments-api-key",
)
OUTBOX_ID = param(
    "id", "path", {"type": "string", "pattern": r"^\d{1,18}$"}, "the write's id in the outbox"
) | {"example": "1"}
ROTATION_ID = param(
    "id", "path", {"type": "string", "pattern": r"^\d{1,18}$"}, "the rotation's id"
) | {"example": "1"}


def _paths() -> dict[str, dict[str, Schema]]:
    # fmt: off
    return {
        "/v1/auth/aws/login": {"post": operation(
            "login", "auth", "Sign in with a signed sts:GetCallerIdentity request",
            ok={"200": answer(ref("Login"), "a bearer token for every other call")},
            body="LoginRequest", errors=(401, 403, 502, 503), public=True,
        )},
        "/v1/auth/whoami": {"get": operation(
            "whoami", "auth", "Your principal, address and bindings",
            ok={"200": answer(ref("Whoami"), "who you are")},
        )},
        "/v1/bindings": {
            "get": operation(
                "list_bindings", "access", "Bindings at, above or under a prefix", needs="view",
                params=(param("path", "query",
                               {"anyOf": [{"type": "string", "pattern": NODE_PATH},
                                          {"const": "*"}], "default": "*"},
                               "a path prefix, or '*' (the default) for every binding"),),
                ok={"200": answer(ref("Bindings"), "the bindings")}, errors=(400,),
            ),
            "post": operation(
                "grant", "access", "Bind a principal pattern to a prefix", needs="admin",
                body="BindingRequest", ok={"201": answer(ref("Binding"), "the new binding")},
            ),
        },
        "/v1/bindings/{id}": {"delete": operation(
            "revoke", "access", "Remove a binding", needs="admin",
            params=(param("id", "path", {"type": "integer"}, "the binding's id")
                    | {"example": 2},),
            ok={"200": answer(ref("BindingRevoked"), "revoked")}, errors=(400, 404),
        )},
        "/v1/nodes": {"get": operation(
            "list_namespaces", "tree", "The namespaces", needs="view (everything)",
            ok={"200": answer(ref("Namespaces"), "namespace paths")},
        )},
        "/v1/nodes/{path}": {
            "put": operation(
                "create_node", "tree", "Create a node, or find it", needs="edit",
                params=(PATH, flag("parents", "create missing ancestors too (needs edit on "
                                               "the namespace)")),
                ok={"201": answer(ref("NodeCreated"), "created"),
                    "200": answer(ref("NodeCreated"), "it already existed")},
                errors=(400, 404),
            ),
            "get": operation(
                "get_node", "tree", "A node: its children and its own secrets", needs="view",
                params=(PATH,), ok={"200": answer(ref("Node"), "the node")}, errors=(400, 404),
            ),
            "delete": operation(
                "delete_node", "tree", "Delete a node (409 while it has children or secrets)",
                needs="edit",
                params=(node_param("prod/payments/eu-west-1"),
                        flag("recursive", "delete the subtree and its secrets")),
                ok={"200": answer(ref("NodeDeleted"), "deleted; SM keeps the secrets for the "
                                                     "recovery window")},
                errors=(400, 404, 409, 502),
            ),
        },
        "/v1/secrets/{ref}": {
            "put": operation(
                "put_secret", "secrets", "Write a secret's new value (to SM, never kept)",
                needs="edit", params=(SECRET,), body="PutSecretRequest",
                ok={"201": answer(ref("SecretWritten"), "a new secret"),
                    "200": answer(ref("SecretWritten"), "a new version of an existing secret")},
                errors=(404, 409, 502),
            ),
            "get": operation(
                "get_secret", "secrets", "A secret's metadata and versions (never its value)",
                needs="view", params=(SECRET,), ok={"200": answer(ref("Secret"), "the secret")},
                errors=(400, 404),
            ),
            "delete": operation(
                "delete_secret", "secrets", "Delete a secret (SM keeps it for the recovery window)",
                needs="edit", params=(secret_param("prod/payments/old-token"),),
                ok={"200": answer(ref("SecretDeleted"), "deleted")}, errors=(400, 404, 409, 502),
            ),
        },
        "/v1/generate/{ref}": {"post": operation(
            "generate_secret", "secrets", "Generate a key by the security profile", needs="edit",
            params=(secret_param("prod/payments/signing-key"),), body="GenerateRequest",
            ok={"201": answer(ref("SecretGenerated"), "a new secret"),
                "200": answer(ref("SecretGenerated"), "a new version of an existing secret")},
            errors=(404, 409, 502),
        )},
        "/v1/datakeys/{ref}": {"post": operation(
            "create_datakey", "secrets", "A KMS data key (ciphertext only), or the next period's",
            needs="edit", params=(secret_param("prod/payments/files"),), body="DataKeyRequest",
            ok={"201": answer(ref("DataKeyWritten"), "a new data key secret"),
                "200": answer(ref("DataKeyWritten"), "the next period's key")},
            errors=(404, 409, 502),
        )},
        "/v1/effective/{path}": {"get": operation(
            "effective", "read", "The effective set of a path", needs="read", params=(APP,),
            ok={"200": answer(ref("EffectiveSet"), "metadata and version ids, never values")},
            errors=(400, 404),
        )},
        "/v1/watch": {"post": operation(
            "watch", "read", "Long poll: answer when path_version moves", needs="read",
            params=(param("timeout", "query", {"type": "number", "minimum": 0},
                           "seconds to hold (0: a short poll); default and maximum are the "
                           "server's KMSD_WATCH_DEFAULT_HOLD and KMSD_WATCH_MAX_HOLD"),),
            body="WatchRequest",
            ok={"200": answer(ref("EffectiveSet"), "the path moved: its new effective set"),
                "304": {"description": "the hold ended and the path did not move"}},
            # 409 reports-unknown: a reports_digest kmsd does not hold; send the reports in full
            errors=(404, 409, 429, 503),
        )},
        "/v1/adoption/{path}": {
            "get": operation(
                "adoption", "read", "Which instances hold which versions", needs="view",
                params=(APP,), ok={"200": answer(ref("Adoption"), "instances and counts")},
                errors=(400, 404),
            ),
            "delete": operation(
                "forget_instance", "read", "Forget an instance's reports at a path",
                needs="rotate",
                params=(APP, param("instance", "query", {"type": "string", "pattern": INSTANCE_ID},
                                    "the instance_id to forget", required=True)
                        | {"example": "i-0abc1234"}),
                ok={"200": answer(ref("AdoptionForgotten"), "forgotten")}, errors=(400, 404),
            ),
        },
        "/v1/iam-policy/app/{path}": {"get": operation(
            "iam_policy_app", "iam",
            "The IAM policy for an application's hosts (recorded as fetched, for drift)",
            needs="view",
            params=(APP, param("source_cidr", "query",
                                {"type": "array", "items": {"type": "string"}},
                                "limit reads to these networks (aws:SourceIp); repeatable"),
                    param("shape", "query",
                          {"type": "string", "enum": list(IAM_SHAPES), "default": IAM_DEFAULT},
                          "prefix: the application's SM name prefix and tags, covering later "
                          "secrets; exact: every secret's ARN (409 when there is none)")),
            ok={"200": answer(ref("IamPolicy"), "the policy")}, errors=(400, 404, 409, 502),
        )},
        "/v1/iam-policy/drift/{path}": {"get": operation(
            "iam_policy_drift", "iam",
            "Whether the policy last fetched for a path still covers what its hosts read",
            needs="view", params=(APP,),
            ok={"200": answer(ref("IamPolicyDrift"), "the last fetch and what it lacks")},
            errors=(400, 404, 502),
        )},
        "/v1/iam-policy/server": {"get": operation(
            "iam_policy_server", "iam", "The IAM policy kmsd itself should run with",
            needs="view (everything)", ok={"200": answer(ref("IamPolicy"), "the policy")},
            errors=(502,),
        )},
        "/v1/audit": {"get": operation(
            "audit_list", "audit", "Audit rows, newest first",
            needs="view on path (admin without one)",
            params=(
                param("principal", "query", {"type": "string"}, "the caller's ARN"),
                param("path", "query", {"type": "string", "pattern": NODE_PATH},
                       "rows about this path and below") | {"example": "prod/payments"},
                param("action", "query", {"type": "string"}, "e.g. secret.put"),
                param("outcome", "query", {"type": "string"},
                       "allowed, denied, rejected, error or attempt"),
                param("since", "query", {"type": "string", "format": "date-time"},
                       "with a zone"),
                param("until", "query", {"type": "string", "format": "date-time"},
                       "with a zone"),
                param("limit", "query",
                       {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
                       "at most this many rows"),
            ),
            ok={"200": answer(ref("AuditRows"), "the rows")}, errors=(400,),
        )},
        "/v1/audit/verify": {"post": operation(
            "audit_verify", "audit", "Walk the hash chain", needs="admin",
            ok={"200": answer(ref("AuditVerified"), "the first row that does not match, if any")},
        )},
        "/v1/outbox": {"get": operation(
            "outbox_list", "audit", "Writes in doubt (the reconciler's queue), oldest first",
            needs="view on each write's path (admin for deletions)",
            params=(flag("quarantined", "only the writes the reconciler gave up on"),),
            ok={"200": answer(ref("OutboxWrites"), "the writes the caller may view")},
        )},
        "/v1/outbox/{id}/retry": {"post": operation(
            "outbox_retry", "audit", "Give a quarantined write back to the reconciler",
            needs="admin", params=(OUTBOX_ID,),
            ok={"200": answer(ref("OutboxRetried"), "the reconciler takes it up again")},
            errors=(409,),
        )},
        "/v1/outbox/{id}": {"delete": operation(
            "outbox_discard", "audit", "Drop a quarantined write: it never becomes current",
            needs="admin", params=(OUTBOX_ID,),
            ok={"200": answer(ref("OutboxDiscarded"), "dropped")}, errors=(409,),
        )},
        "/v1/expiring": {"get": operation(
            "expiring", "secrets", "Hand-made secrets expiring soon", needs="view (everything)",
            params=(param("days", "query",
                           {"type": "integer", "minimum": 0, "maximum": 3650, "default": 30},
                           "the horizon"),),
            ok={"200": answer(ref("Expiring"), "the secrets")}, errors=(400,),
        )},
        "/v1/shares": {
            "post": operation(
                "share", "sharing", "Share a secret with another application",
                needs="edit of the secret", body="ShareRequest",
                ok={"201": answer(ref("Share"), "shared")}, errors=(404,),
            ),
            "delete": operation(
                "unshare", "sharing", "Stop sharing (409 while referenced)",
                needs="edit of the secret",
                params=(
                    param("secret", "query", {"type": "string", "pattern": SECRET_REF},
                           "PATH/NAME of the secret", required=True)
                    | {"example": "prod/payments/db"},
                    param("to", "query", {"type": "string", "pattern": APPLICATION},
                           "NAMESPACE/APP", required=True) | {"example": "prod/billing"},
                    flag("remove_refs", "remove that application's references too"),
                ),
                ok={"200": answer(ref("Unshared"), "unshared")}, errors=(400, 404, 409),
            ),
        },
        "/v1/refs/{ref}": {
            "put": operation(
                "put_ref", "sharing", "Reference a shared secret under a local name",
                needs="edit", params=(LOCAL,), body="RefRequest",
                ok={"201": answer(ref("Ref"), "the reference")}, errors=(403, 404, 409),
            ),
            "delete": operation(
                "delete_ref", "sharing", "Remove a reference", needs="edit", params=(LOCAL,),
                ok={"200": answer(ref("RefDeleted"), "removed")}, errors=(400, 404),
            ),
        },
        "/v1/rotations": {
            "post": operation(
                "rotation_start", "rotations", "Start a rotation: the new value as pending",
                needs="rotate", body="RotationStartRequest",
                ok={"201": answer(ref("Rotation"), "the rotation")}, errors=(404, 409, 502),
            ),
            "get": operation(
                "rotation_list", "rotations", "Rotations, newest first",
                needs="view on path (everything without one)",
                params=(
                    param("path", "query", {"type": "string", "pattern": NODE_PATH},
                           "rotations of secrets at this path and below"),
                    flag("active", "only rotations still in progress"),
                    param("limit", "query",
                           {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                           "at most this many"),
                ),
                ok={"200": answer(ref("Rotations"), "the rotations")}, errors=(400,),
            ),
        },
        "/v1/rotations/{id}": {"get": operation(
            "rotation_describe", "rotations", "A rotation: gate progress, versions, history",
            needs="view", params=(ROTATION_ID,), ok={"200": answer(ref("Rotation"), "it")},
            errors=(404,),
        )},
        "/v1/rotations/{id}/{verb}": {"post": operation(
            "rotation_command", "rotations", "An operator's command", needs="rotate",
            params=(ROTATION_ID, param("verb", "path", {"enum": list(COMMANDS)}, "the command")),
            body="RotationCommandRequest", body_required=False,
            ok={"200": answer(ref("Rotation"), "the rotation after the command")},
            errors=(404, 409, 502),
        )},
        "/v1/webhooks/{path}": {
            "put": operation(
                "set_webhook", "rotations", "Set an application's rotation webhook",
                needs="admin", params=(WEBHOOK_APP,), body="WebhookRequest",
                ok={"201": answer(ref("Webhook"), "the hook and its HMAC key (shown once)")},
                # 409: no KMSD_WEBHOOK_MAC_KEY; 502: KMS did not derive the key.
                errors=(409, 502),
            ),
            "delete": operation(
                "delete_webhook", "rotations", "Remove an application's webhook", needs="admin",
                params=(PATH,), ok={"204": {"description": "removed"}}, errors=(400, 404),
            ),
        },
        "/v1/openapi.json": {"get": operation(
            "openapi", "meta", "This document", errors=(403,),
            ok={"200": answer(ref("OpenApi"), "OpenAPI 3.1")}, public=True,
        )},
        "/healthz": {"get": operation(
            "healthz", "meta", "Liveness: PostgreSQL answers, the audit writer and LISTEN run",
            ok={"200": answer(ref("Health"), "healthy"), "503": answer(ref("Health"), "degraded")},
            public=True,
        )},
        "/metrics": {"get": operation(
            "metrics", "meta", "Prometheus metrics",
            ok={"200": {"description": "Prometheus text format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}},
            public=True,
        )},
    }
    # fmt: on


def build() -> dict[str, Any]:
    """Build the OpenAPI document (a fresh dict: callers may change their copy)."""
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "kmsd",
            "version": __version__,
            "summary": "Key-management metadata: secret values live only in AWS SM and KMS",
            "description": "Every refusal is application/problem+json (RFC 9457) with a "
            "request_id. Sign in with POST /v1/auth/aws/login, then send "
            "Authorization: Bearer TOKEN.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": [
            {"name": name}
            for name in (
                "auth",
                "access",
                "tree",
                "secrets",
                "read",
                "sharing",
                "rotations",
                "console",
                "audit",
                "iam",
                "meta",
            )
        ],
        "paths": _paths() | console_paths(),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the token from POST /v1/auth/aws/login",
                },
                "consoleCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "kmsd_console",
                    "description": "the console session set by GET /ui/login",
                },
            },
            "schemas": SCHEMAS,
            "responses": problem_responses(),
        },
    }


@functools.cache
def document_bytes() -> bytes:
    """The document as JSON, built once per process (it is the same for every caller)."""
    return orjson.dumps(build())


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=document_bytes(), content_type="application/json")
