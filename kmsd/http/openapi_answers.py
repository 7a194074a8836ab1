"""Component schemas of kmsd's answers, and the problem+json refusals shared by every call.

Answer schemas list the fields a client may rely on and leave room for more
(``additionalProperties`` is not closed on answers); tests/e2e/test_schemathesis.py checks
real answers against them.
"""

from __future__ import annotations

from typing import Any

from kmsd.domain.access import PERMISSIONS
from kmsd.domain.iam import SHAPES
from kmsd.domain.rotation import MODES, PHASES
from kmsd.domain.tree import KINDS, STAGES
from kmsd.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    KmsError,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
    UpstreamError,
)
from kmsd.http.openapi_schemas import (
    NULLABLE_TIME,
    TIME,
    Schema,
    array,
    obj,
    ref,
    string,
)

_BINDING = {
    "id": {"type": "integer"},
    "principal": string(),
    "path": string(),
    "permission": {"enum": list(PERMISSIONS)},
    "cidrs": array(string()),
}
_VERSION = obj(
    {
        "version_id": string(),
        "stage": {"enum": list(STAGES)},
        "created_at": TIME,
        "ciphertext_blob": string(contentEncoding="base64", description="data keys only"),
    },
    ("version_id", "stage"),
)
_EFFECTIVE_SECRET = obj(
    {
        "name": string(),
        "kind": {"enum": [*KINDS, "datakey"]},
        "source": string(description="the node (or PATH/NAME of the shared secret) it comes from"),
        "overrides": array(string()),
        "via": string(description="references only: the node that holds the reference"),
        "sm_arn": string(),
        "expires_at": NULLABLE_TIME,
        "cmk_arn": string(),
        "encryption_context": obj({}, additionalProperties=string()),
        "versions": array(_VERSION),
    },
    ("name", "kind", "source", "versions"),
)
_WRITE = {
    "path": string(),
    "name": string(),
    "kind": string(),
    "sm_arn": string(),
    "version_id": string(),
    "created": {"type": "boolean"},
}
_GATE_INSTANCE = obj(
    {
        "instance_id": string(),
        "path": string(),
        "role": {"enum": ["owner", "referencer"]},
        "name": string(),
        "current": {"type": ["string", "null"]},
        "ip": string(),
        "last_seen": TIME,
        "stale_at": TIME,
        "processes": obj({}, additionalProperties=string()),
    }
)
# One watching instance as GET /v1/adoption lists it.
_WATCHER = obj(
    {
        "instance_id": string(),
        "role": {"enum": ["serving", "observer"]},
        "principal": string(),
        "ip": string(),
        "app_process_ids": array(string()),
        "processes": obj({}, additionalProperties={"type": "object"}),
        "path_version": {"type": "integer"},
        "replica": string(),
        "last_seen": TIME,
        "stale": {"type": "boolean"},
        "stale_at": TIME,
    },
    ("instance_id", "role", "last_seen", "stale"),
)
_ROTATION = {
    "id": {"type": "integer"},
    "path": string(),
    "name": string(),
    "phase": {"enum": list(PHASES)},
    "mode": {"enum": list(MODES)},
    "paused": {"type": "boolean"},
    "leaked": {"type": "boolean"},
    "gate_timeout_s": {"type": "integer"},
    "timed_out": {"type": "boolean"},
    "labels_pending": {"type": "boolean"},
    "old_version": {"type": ["string", "null"]},
    "new_version": string(),
    "started_by": string(),
    "started_at": TIME,
    "phase_since": TIME,
    "finished_at": NULLABLE_TIME,
}
_POLICY = obj(
    {"Version": string(), "Statement": array(obj({"Effect": string()}, ("Effect",)))},
    ("Version", "Statement"),
    description="an IAM policy document",
)

ANSWERS: dict[str, Schema] = {
    "Problem": obj(
        {
            "type": string(format="uri", examples=["https://kmsd.dev/problems/not-found"]),
            "title": string(),
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": string(),
            "request_id": string(),
        },
        ("type", "title", "status", "detail"),
        description="RFC 9457 problem details; extension members may follow",
    ),
    "Login": obj(
        {"token": string(), "principal": string(), "caller_arn": string(), "expires_at": TIME},
        ("token", "principal", "expires_at"),
    ),
    "Whoami": obj(
        {
            "principal": string(),
            "caller_arn": string(),
            "source_ip": string(),
            "admin": {"type": "boolean"},
            "bindings": array(obj({**_BINDING, "grants": array({"enum": list(PERMISSIONS)})})),
        },
        ("principal", "admin", "bindings"),
    ),
    "Binding": obj(_BINDING, ("id", "principal", "path", "permission", "cidrs")),
    "BindingRevoked": obj(
        {"id": {"type": "integer"}, "revoked": {"const": True}}, ("id", "revoked")
    ),
    "Bindings": obj({"bindings": array(ref("Binding"))}, ("bindings",)),
    "Namespaces": obj({"namespaces": array(string())}, ("namespaces",)),
    "NodeCreated": obj(
        {"path": string(), "created": array(string(), description="the paths created")},
        ("path", "created"),
    ),
    "Node": obj(
        {
            "path": string(),
            "level": {"enum": ["namespace", "application", "node"]},
            "changed_seq": {"type": "integer"},
            "children": array(string()),
            "secrets": array(string()),
        },
        ("path", "level", "children", "secrets"),
    ),
    "NodeDeleted": obj(
        {"path": string(), "deleted": {"const": True}, "secrets_deleted": {"type": "integer"}},
        ("path", "deleted"),
    ),
    "SecretWritten": obj(_WRITE, ("path", "name", "kind", "version_id", "created")),
    "SecretGenerated": obj(
        {
            **_WRITE,
            "generated": obj(
                {
                    "use": string(),
                    "algorithm": string(),
                    "size": {"type": ["integer", "null"]},
                    "lifetime_days": {"type": "integer"},
                }
            ),
            "expires_at": TIME,
        },
        ("path", "name", "version_id", "created", "generated", "expires_at"),
    ),
    "DataKeyWritten": obj(
        {**_WRITE, "cmk_arn": string(), "period_days": {"type": "integer"}},
        ("path", "name", "kind", "version_id", "created"),
    ),
    "Secret": obj(
        {
            "path": string(),
            "name": string(),
            "kind": {"enum": [*KINDS, "datakey"]},
            "sm_arn": {"type": ["string", "null"]},
            "description": {"type": ["string", "null"]},
            "tags": obj({}, additionalProperties=string()),
            "created_by": string(),
            "created_at": TIME,
            "updated_at": NULLABLE_TIME,
            "expires_at": NULLABLE_TIME,
            "generated": {"type": ["object", "null"]},
            "public_key_pem": {"type": ["string", "null"]},
            "cmk_arn": {"type": ["string", "null"]},
            "period_days": {"type": ["integer", "null"]},
            "versions": array(
                obj(
                    {
                        "version_id": string(),
                        "stage": {"enum": list(STAGES)},
                        "created_by": string(),
                        "created_at": TIME,
                    }
                )
            ),
        },
        ("path", "name", "kind", "versions"),
        description="a secret's metadata and versions; never its value",
    ),
    "SecretDeleted": obj(
        {"path": string(), "name": string(), "deleted": {"const": True}},
        ("path", "name", "deleted"),
    ),
    "EffectiveSet": obj(
        {
            "path": string(),
            "path_version": {"type": "integer"},
            "hash": string(),
            "secrets": array(_EFFECTIVE_SECRET),
        },
        ("path", "path_version", "hash", "secrets"),
        description="the secrets that apply at a path, with the versions this caller may use",
    ),
    "Adoption": obj(
        {
            "path": string(),
            "stale_after_s": {"type": "integer"},
            "instances": array(_WATCHER, description="serving instances (agents)"),
            "observers": array(
                _WATCHER, description="watchers that serve nothing (kmsctl watch): never counted"
            ),
            "counts": obj(
                {
                    "instances": {"type": "integer"},
                    "live": {"type": "integer"},
                    "stale": {"type": "integer"},
                    "observers": {"type": "integer"},
                }
            ),
            "secrets": array(
                obj(
                    {
                        "name": string(),
                        "versions": array(
                            obj(
                                {
                                    "version_id": string(),
                                    "stage": {"type": ["string", "null"]},
                                    "instances": array(string()),
                                    "count": {"type": "integer"},
                                    "live": {"type": "integer"},
                                    "stale": {"type": "integer"},
                                }
                            )
                        ),
                    }
                )
            ),
        },
        ("path", "instances", "observers", "counts", "secrets"),
    ),
    "AdoptionForgotten": obj(
        {"path": string(), "instance_id": string(), "forgotten": {"const": True}},
        ("path", "instance_id", "forgotten"),
    ),
    "IamPolicy": _POLICY,
    "IamPolicyDrift": obj(
        {
            "path": string(),
            "fetched_at": NULLABLE_TIME,
            "shape": {"enum": [*SHAPES, None]},
            "source_cidrs": array(string()),
            "added_since": array(
                string(description="PATH/NAME of a secret or reference made after the fetch")
            ),
            "uncovered": array(
                string(description="an ARN the policy needs now and the fetched one lacks")
            ),
            "needs_reapply": {"type": "boolean"},
        },
        ("path", "fetched_at", "shape", "added_since", "uncovered", "needs_reapply"),
        description="never fetched: fetched_at and shape null, needs_reapply true",
    ),
    "AuditRows": obj(
        {
            "rows": array(
                obj(
                    {
                        "seq": {"type": "integer"},
                        "at": TIME,
                        "principal": string(),
                        "claimed": string(),
                        "source_ip": string(),
                        "action": string(),
                        "target": string(),
                        "outcome": string(),
                        "status": {"type": "integer"},
                        "request_id": string(),
                        "replica": string(),
                        "hash": string(),
                    },
                    ("seq", "at", "principal", "action", "target", "outcome", "status"),
                )
            )
        },
        ("rows",),
    ),
    "AuditVerified": obj(
        {
            "ok": {"type": "boolean"},
            "checked": {"type": "integer"},
            "first_broken_seq": {"type": ["integer", "null"]},
        },
        ("ok", "checked", "first_broken_seq"),
    ),
    "OutboxWrites": obj(
        {
            "writes": array(
                obj(
                    {
                        "id": {"type": "integer"},
                        "seq": {"type": "integer"},
                        "op": {"enum": ["put", "delete"]},
                        "path": {"type": ["string", "null"]},
                        "name": {"type": ["string", "null"]},
                        "sm_name": string(),
                        "version_id": {"type": ["string", "null"]},
                        "created_at": TIME,
                        "attempts": {"type": "integer"},
                        "last_error": {"type": ["string", "null"]},
                        "quarantined": {"type": "boolean"},
                    },
                    ("id", "op", "sm_name", "attempts", "quarantined"),
                )
            ),
            "quarantine_after": {"type": "integer"},
        },
        ("writes", "quarantine_after"),
    ),
    "OutboxRetried": obj({"id": {"type": "integer"}, "retried": {"const": True}}, ("id",)),
    "OutboxDiscarded": obj({"id": {"type": "integer"}, "discarded": {"const": True}}, ("id",)),
    "Expiring": obj(
        {
            "days": {"type": "integer"},
            "secrets": array(
                obj({"path": string(), "name": string(), "kind": string(), "expires_at": TIME})
            ),
        },
        ("days", "secrets"),
    ),
    "Share": obj({"secret": string(), "to": string()}, ("secret", "to")),
    "Unshared": obj(
        {"secret": string(), "to": string(), "removed_refs": {"type": "integer"}},
        ("secret", "to", "removed_refs"),
    ),
    "Ref": obj(
        {"path": string(), "name": string(), "target": string()}, ("path", "name", "target")
    ),
    "RefDeleted": obj(
        {"path": string(), "name": string(), "deleted": {"const": True}},
        ("path", "name", "deleted"),
    ),
    "RotationSummary": obj(
        {**_ROTATION, "gate": {"type": ["integer", "null"], "description": "1, 2 or none"}},
        ("id", "path", "name", "phase", "mode"),
    ),
    "Rotations": obj({"rotations": array(ref("RotationSummary"))}, ("rotations",)),
    "Rotation": obj(
        {
            **_ROTATION,
            "gate": {
                "anyOf": [
                    {"type": "null"},
                    obj(
                        {
                            "gate": {"enum": [1, 2]},
                            "target_version": string(),
                            "met": {"type": "boolean"},
                            "counts": obj({}, additionalProperties={"type": "integer"}),
                            "held": array(_GATE_INSTANCE),
                            "waiting": array(_GATE_INSTANCE),
                            "stale": array(_GATE_INSTANCE),
                        }
                    ),
                ]
            },
            "stale_after_s": {"type": "integer"},
            "versions": array(
                obj(
                    {
                        "version_id": string(),
                        "stage": string(),
                        "created_at": TIME,
                        "role": {"enum": ["new", "old", None]},
                    }
                )
            ),
            "events": array(
                obj(
                    {
                        "id": {"type": "integer"},
                        "action": string(),
                        "phase": string(),
                        "actor": string(),
                        "forced": {"type": "boolean"},
                        "detail": {},
                        "at": TIME,
                    }
                )
            ),
        },
        ("id", "path", "name", "phase", "mode", "versions", "events"),
        description="a rotation, its gate's progress and its history (never a value)",
    ),
    "Webhook": obj(
        {"app": string(), "url": string(), "hmac_key": string(), "signature_header": string()},
        ("app", "url", "hmac_key"),
        description=(
            "hmac_key is shown once: the receiver verifies X-Kmsd-Signature with it. kmsd does "
            "not store it: it keeps a salt and derives the key again with KMS GenerateMac "
            "(KMSD_WEBHOOK_MAC_KEY) for each delivery"
        ),
    ),
    "ConsoleLink": obj({"path": string(), "expires_at": TIME}, ("path", "expires_at")),
    "Health": obj(
        {
            "status": {"enum": ["ok", "degraded"]},
            "database": {"type": "boolean"},
            "audit_writer": {"type": "boolean"},
            "listen": {"type": "boolean"},
        },
        ("status", "database", "audit_writer", "listen"),
    ),
    "OpenApi": obj({"openapi": string()}, ("openapi",)),
}

# Every refusal kmsd sends, by status: the error class it comes from names the problem type.
PROBLEMS: dict[int, tuple[type[KmsError] | None, str]] = {
    400: (InvalidInput, "the request is malformed; detail names the field and the rule"),
    401: (Unauthenticated, "no valid bearer token (or the sign-in request was rejected)"),
    403: (Forbidden, "no binding grants this, or the caller's address is not allowed"),
    404: (NotFound, "the node, secret, rotation or route does not exist"),
    409: (Conflict, "the change conflicts with the current state (detail says which)"),
    413: (PayloadTooLarge, "the body or value is over the limit"),
    415: (UnsupportedMediaType, "send the body as application/json"),
    429: (TooManyRequests, "too many polls held by this token: retry after Retry-After"),
    502: (UpstreamError, "AWS (SM, KMS or STS) refused or failed; nothing was recorded"),
    503: (Unavailable, "the audit trail cannot be written (fail closed) or the replica stops"),
}


def problem_responses() -> dict[str, Any]:
    """The shared ``components.responses``: one problem+json answer per refusal status."""
    out: dict[str, Any] = {}
    for status, (cls, text) in PROBLEMS.items():
        example = (
            {
                "type": f"https://kmsd.dev/problems/{cls.code}",
                "title": cls.title,
                "status": status,
                "detail": text,
            }
            if cls is not None
            else {
                "type": "about:blank",
                "title": "Too many requests",
                "status": status,
                "detail": text,
            }
        )
        out[str(status)] = {
            "description": text,
            "content": {"application/problem+json": {"schema": ref("Problem"), "example": example}},
        }
    out["503"]["headers"] = {
        "Retry-After": {"description": "seconds, when the replica is stopping", "schema": string()}
    }
    return out
