"""Component schemas of kmsd's OpenAPI document: request bodies, answers, problems.

Request schemas say exactly what the handlers and ``kmsd.domain`` parsers accept: the same
name rule, the same limits, ``additionalProperties: false`` where the handler refuses an
unknown field (``json_body(allowed=...)``). They are built from the constants those parsers
use, so a changed limit changes the document with it. Answer schemas list the fields a client
may rely on and leave room for more (``additionalProperties`` is not closed on answers).
"""

from __future__ import annotations

from typing import Any

from kmsd.domain.access import PERMISSIONS, ROOT
from kmsd.domain.names import MAX_DEPTH, SEGMENT_RULE
from kmsd.domain.profile import USES
from kmsd.domain.rotation import MODES, PHASES
from kmsd.domain.tree import KINDS, STAGES
from kmsd.domain.watch import MAX_HELD, MAX_PROCESS_IDS, MAX_VERSIONS_PER_SECRET
from kmsd.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    KmsError,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
    UpstreamError,
)

Schema = dict[str, Any]

SEGMENT = f"^{SEGMENT_RULE}$"
# Tail parameters ({path}, {ref}) span slashes: the server decodes %2F as well as a plain '/'.
NODE_PATH = f"^{SEGMENT_RULE}(/{SEGMENT_RULE}){{0,{MAX_DEPTH - 1}}}$"
APP_PATH = f"^{SEGMENT_RULE}(/{SEGMENT_RULE}){{1,{MAX_DEPTH - 1}}}$"
APPLICATION = f"^{SEGMENT_RULE}/{SEGMENT_RULE}$"
SECRET_REF = f"^{SEGMENT_RULE}(/{SEGMENT_RULE}){{1,{MAX_DEPTH}}}$"
INSTANCE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$"
ARN_PATTERN = r"^arn:(aws|aws-cn|aws-us-gov):iam::\d{12}:(role|user)/[A-Za-z0-9+=,.@_/*-]{1,512}$"
# What base64.b64decode(..., validate=True) accepts: the standard alphabet, padded.
BASE64 = r"^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
# Secrets Manager's limit on one value; the server answers 413 above it.
SM_MAX_VALUE_BYTES = 65536


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _str(**kw: Any) -> Schema:
    return {"type": "string", **kw}


def _obj(
    properties: dict[str, Schema],
    required: tuple[str, ...] = (),
    *,
    closed: bool = False,
    **kw: Any,
) -> Schema:
    out: Schema = {"type": "object", "properties": properties, **kw}
    if required:
        out["required"] = list(required)
    if closed:
        out["additionalProperties"] = False
    return out


def _array(items: Schema, **kw: Any) -> Schema:
    return {"type": "array", "items": items, **kw}


TIME = _str(format="date-time")
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
VERSION_ID = _str(minLength=1, maxLength=128)
HELD = _obj(
    {},
    maxProperties=MAX_HELD,
    propertyNames={"pattern": SEGMENT},
    additionalProperties=VERSION_ID,
    description="secret name -> the version id held",
)

# -- requests ----------------------------------------------------------------------------------

REQUESTS: dict[str, Schema] = {
    "LoginRequest": _obj(
        {
            "iam_http_request_method": _str(description="the signed request's method: POST"),
            "iam_request_url": _str(
                contentEncoding="base64",
                pattern=BASE64,
                description="base64 of the STS endpoint URL",
            ),
            "iam_request_body": _str(
                contentEncoding="base64",
                pattern=BASE64,
                description="base64 of Action=GetCallerIdentity&Version=2011-06-15",
            ),
            "iam_request_headers": _str(
                contentEncoding="base64",
                pattern=BASE64,
                description="base64 of the JSON object of the signed headers; they must include "
                "X-Kmsd-Server-Id (signed) equal to the server's id",
            ),
        },
        (
            "iam_http_request_method",
            "iam_request_url",
            "iam_request_body",
            "iam_request_headers",
        ),
        closed=True,
        description="A signed sts:GetCallerIdentity request (Vault's AWS iam scheme)",
    ),
    "BindingRequest": _obj(
        {
            "principal": _str(
                pattern=ARN_PATTERN,
                description="IAM role or user ARN pattern; '*' only in the name, never across ':'",
            ),
            "path": {
                "anyOf": [_str(pattern=NODE_PATH), {"const": ROOT}],
                "description": "path prefix the binding covers, or '*' for everything",
            },
            "permission": {"enum": list(PERMISSIONS)},
            "cidrs": _array(
                _str(examples=["10.0.0.0/8"]), description="calls only from these networks"
            ),
        },
        ("principal", "path", "permission"),
        closed=True,
    ),
    "PutSecretRequest": {
        **_obj(
            {
                "kind": {"enum": list(KINDS), "default": "json"},
                "value": _obj(
                    {},
                    minProperties=1,
                    description=f"json secrets: the key/value map (at most {SM_MAX_VALUE_BYTES} "
                    "bytes as JSON)",
                ),
                "value_b64": _str(
                    contentEncoding="base64",
                    pattern=BASE64,
                    minLength=1,
                    description=f"binary secrets: the bytes (1 to {SM_MAX_VALUE_BYTES}) in base64",
                ),
                "description": _str(maxLength=2048),
                "tags": _obj(
                    {},
                    maxProperties=50,
                    propertyNames={"minLength": 1, "maxLength": 128},
                    additionalProperties=_str(maxLength=256),
                ),
                "expires_at": _str(
                    format="date-time",
                    description="with a zone, in the future; default: the profile's lifetime "
                    "of hand-made secrets",
                ),
            },
            closed=True,
        ),
        "anyOf": [
            {"required": ["value"], "properties": {"kind": {"const": "json"}}},
            {"required": ["kind", "value_b64"], "properties": {"kind": {"const": "binary"}}},
        ],
    },
    "GenerateRequest": _obj(
        {
            "use": _str(
                description="a use of the security profile; the default profile has "
                + ", ".join(USES)
            ),
            "algorithm": _str(description="default: the use's first algorithm"),
            "length": {"type": "integer", "description": "bits (RSA, HMAC) or characters"},
            "lifetime_days": {"type": "integer"},
            "description": _str(maxLength=2048),
        },
        ("use",),
        closed=True,
    ),
    "DataKeyRequest": _obj(
        {
            "cmk": _str(minLength=1, maxLength=2048, description="KMS key id, ARN or alias"),
            "period_days": {"type": "integer", "minimum": 1, "maximum": 3650, "default": 182},
        },
        ("cmk",),
        closed=True,
    ),
    "WatchRequest": _obj(
        {
            "path": _str(pattern=APP_PATH, description="an application or a node below it"),
            "path_version": {
                "type": "integer",
                "minimum": 0,
                "maximum": 2**63 - 1,
                "default": 0,
                "description": "the version held; 0 if none",
            },
            "instance_id": _str(pattern=INSTANCE_ID),
            "role": {
                "enum": ["serving", "observer"],
                "default": "serving",
                "description": "observer: a watcher that serves no application (kmsctl watch); "
                "it is listed but never counted by a rotation's gates",
            },
            "app_process_ids": _array(
                {"anyOf": [_str(maxLength=64), {"type": "integer"}]},
                maxItems=MAX_PROCESS_IDS,
            ),
            "held": HELD,
            "processes": _obj(
                {},
                maxProperties=MAX_PROCESS_IDS,
                propertyNames={"minLength": 1, "maxLength": 64},
                additionalProperties=HELD,
                description="per application process: the version of each secret it last read",
            ),
            "versions": _obj(
                {},
                maxProperties=MAX_HELD,
                propertyNames={"pattern": SEGMENT},
                additionalProperties=_array(VERSION_ID, maxItems=MAX_VERSIONS_PER_SECRET),
                description="every version of each secret the instance holds",
            ),
        },
        ("path", "instance_id"),
        closed=True,
    ),
    "ShareRequest": _obj(
        {
            "secret": _str(pattern=SECRET_REF, description="PATH/NAME of the secret"),
            "to": _str(pattern=APPLICATION, description="NAMESPACE/APP"),
        },
        ("secret", "to"),
        closed=True,
    ),
    "RefRequest": _obj(
        {"target": _str(pattern=SECRET_REF, description="PATH/NAME of a shared secret")},
        ("target",),
        closed=True,
    ),
    "RotationStartRequest": {
        **_obj(
            {
                "path": _str(pattern=NODE_PATH),
                "name": _str(pattern=SEGMENT),
                "value": _obj({}, description="the new value of a json secret"),
                "value_b64": _str(
                    contentEncoding="base64",
                    pattern=BASE64,
                    description="the new value of a binary secret",
                ),
                "generate": {
                    "type": "boolean",
                    "default": False,
                    "description": "make the new value from the secret's generation spec",
                },
                "mode": {
                    "enum": list(MODES),
                    "description": "default: auto for a leaked secret, else manual",
                },
                "gate_timeout": {
                    "anyOf": [
                        _str(pattern=r"^\s*\d+(\.\d+)?[smhdSMHD]?\s*$"),
                        {"type": "integer", "minimum": 10, "maximum": 30 * 86400},
                        {"type": "null"},
                    ],
                    "description": "how long a gate may wait: 90s, 15m, 2h, 1d (10 s to 30 d); "
                    "absent or null: 1 h, or 5 min for a leaked secret",
                },
                "leaked": {"type": "boolean", "default": False},
            },
            ("path", "name"),
            closed=True,
        ),
        "oneOf": [
            {
                "required": ["value"],
                "properties": {"generate": {"const": False}},
                "not": {"required": ["value_b64"]},
            },
            {
                "required": ["value_b64"],
                "properties": {"generate": {"const": False}},
                "not": {"required": ["value"]},
            },
            {
                "required": ["generate"],
                "properties": {"generate": {"const": True}},
                "not": {"anyOf": [{"required": ["value"]}, {"required": ["value_b64"]}]},
            },
        ],
    },
    "RotationCommandRequest": _obj({"force": {"type": "boolean", "default": False}}, closed=True),
    "WebhookRequest": _obj(
        {"url": _str(format="uri", pattern="^https?://", description="an http(s) URL")},
        ("url",),
        closed=True,
    ),
}

# -- answers -----------------------------------------------------------------------------------

_BINDING = {
    "id": {"type": "integer"},
    "principal": _str(),
    "path": _str(),
    "permission": {"enum": list(PERMISSIONS)},
    "cidrs": _array(_str()),
}
_VERSION = _obj(
    {
        "version_id": _str(),
        "stage": {"enum": list(STAGES)},
        "created_at": TIME,
        "ciphertext_blob": _str(contentEncoding="base64", description="data keys only"),
    },
    ("version_id", "stage"),
)
_EFFECTIVE_SECRET = _obj(
    {
        "name": _str(),
        "kind": {"enum": [*KINDS, "datakey"]},
        "source": _str(description="the node (or PATH/NAME of the shared secret) it comes from"),
        "overrides": _array(_str()),
        "via": _str(description="references only: the node that holds the reference"),
        "sm_arn": _str(),
        "expires_at": NULLABLE_TIME,
        "cmk_arn": _str(),
        "encryption_context": _obj({}, additionalProperties=_str()),
        "versions": _array(_VERSION),
    },
    ("name", "kind", "source", "versions"),
)
_WRITE = {
    "path": _str(),
    "name": _str(),
    "kind": _str(),
    "sm_arn": _str(),
    "version_id": _str(),
    "created": {"type": "boolean"},
}
_GATE_INSTANCE = _obj(
    {
        "instance_id": _str(),
        "path": _str(),
        "role": _str(),
        "name": _str(),
        "current": {"type": ["string", "null"]},
        "ip": _str(),
        "last_seen": TIME,
        "processes": _obj({}, additionalProperties=_str()),
    }
)
_ROTATION = {
    "id": {"type": "integer"},
    "path": _str(),
    "name": _str(),
    "phase": {"enum": list(PHASES)},
    "mode": {"enum": list(MODES)},
    "paused": {"type": "boolean"},
    "leaked": {"type": "boolean"},
    "gate_timeout_s": {"type": "integer"},
    "timed_out": {"type": "boolean"},
    "labels_pending": {"type": "boolean"},
    "old_version": {"type": ["string", "null"]},
    "new_version": _str(),
    "started_by": _str(),
    "started_at": TIME,
    "phase_since": TIME,
    "finished_at": NULLABLE_TIME,
}
_POLICY = _obj(
    {"Version": _str(), "Statement": _array(_obj({"Effect": _str()}, ("Effect",)))},
    ("Version", "Statement"),
    description="an IAM policy document",
)

ANSWERS: dict[str, Schema] = {
    "Problem": _obj(
        {
            "type": _str(format="uri", examples=["https://kmsd.dev/problems/not-found"]),
            "title": _str(),
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": _str(),
            "request_id": _str(),
        },
        ("type", "title", "status", "detail"),
        description="RFC 9457 problem details; extension members may follow",
    ),
    "Login": _obj(
        {"token": _str(), "principal": _str(), "caller_arn": _str(), "expires_at": TIME},
        ("token", "principal", "expires_at"),
    ),
    "Whoami": _obj(
        {
            "principal": _str(),
            "caller_arn": _str(),
            "source_ip": _str(),
            "admin": {"type": "boolean"},
            "bindings": _array(_obj({**_BINDING, "grants": _array({"enum": list(PERMISSIONS)})})),
        },
        ("principal", "admin", "bindings"),
    ),
    "Binding": _obj(_BINDING, ("id", "principal", "path", "permission", "cidrs")),
    "BindingRevoked": _obj(
        {"id": {"type": "integer"}, "revoked": {"const": True}}, ("id", "revoked")
    ),
    "Bindings": _obj({"bindings": _array(ref("Binding"))}, ("bindings",)),
    "Namespaces": _obj({"namespaces": _array(_str())}, ("namespaces",)),
    "NodeCreated": _obj(
        {"path": _str(), "created": _array(_str(), description="the paths created")},
        ("path", "created"),
    ),
    "Node": _obj(
        {
            "path": _str(),
            "level": {"enum": ["namespace", "application", "node"]},
            "changed_seq": {"type": "integer"},
            "children": _array(_str()),
            "secrets": _array(_str()),
        },
        ("path", "level", "children", "secrets"),
    ),
    "NodeDeleted": _obj(
        {"path": _str(), "deleted": {"const": True}, "secrets_deleted": {"type": "integer"}},
        ("path", "deleted"),
    ),
    "SecretWritten": _obj(_WRITE, ("path", "name", "kind", "version_id", "created")),
    "SecretGenerated": _obj(
        {
            **_WRITE,
            "generated": _obj(
                {
                    "use": _str(),
                    "algorithm": _str(),
                    "size": {"type": ["integer", "null"]},
                    "lifetime_days": {"type": "integer"},
                }
            ),
            "expires_at": TIME,
        },
        ("path", "name", "version_id", "created", "generated", "expires_at"),
    ),
    "DataKeyWritten": _obj(
        {**_WRITE, "cmk_arn": _str(), "period_days": {"type": "integer"}},
        ("path", "name", "kind", "version_id", "created"),
    ),
    "Secret": _obj(
        {
            "path": _str(),
            "name": _str(),
            "kind": {"enum": [*KINDS, "datakey"]},
            "sm_arn": {"type": ["string", "null"]},
            "description": {"type": ["string", "null"]},
            "tags": _obj({}, additionalProperties=_str()),
            "created_by": _str(),
            "created_at": TIME,
            "updated_at": NULLABLE_TIME,
            "expires_at": NULLABLE_TIME,
            "generated": {"type": ["object", "null"]},
            "public_key_pem": {"type": ["string", "null"]},
            "cmk_arn": {"type": ["string", "null"]},
            "period_days": {"type": ["integer", "null"]},
            "versions": _array(
                _obj(
                    {
                        "version_id": _str(),
                        "stage": {"enum": list(STAGES)},
                        "created_by": _str(),
                        "created_at": TIME,
                    }
                )
            ),
        },
        ("path", "name", "kind", "versions"),
        description="a secret's metadata and versions; never its value",
    ),
    "SecretDeleted": _obj(
        {"path": _str(), "name": _str(), "deleted": {"const": True}}, ("path", "name", "deleted")
    ),
    "EffectiveSet": _obj(
        {
            "path": _str(),
            "path_version": {"type": "integer"},
            "hash": _str(),
            "secrets": _array(_EFFECTIVE_SECRET),
        },
        ("path", "path_version", "hash", "secrets"),
        description="the secrets that apply at a path, with the versions this caller may use",
    ),
    "Adoption": _obj(
        {
            "path": _str(),
            "stale_after_s": {"type": "integer"},
            "instances": _array(
                _obj(
                    {
                        "instance_id": _str(),
                        "principal": _str(),
                        "ip": _str(),
                        "app_process_ids": _array(_str()),
                        "processes": _obj({}, additionalProperties={"type": "object"}),
                        "path_version": {"type": "integer"},
                        "replica": _str(),
                        "last_seen": TIME,
                        "stale": {"type": "boolean"},
                    },
                    ("instance_id", "last_seen", "stale"),
                )
            ),
            "counts": _obj(
                {
                    "instances": {"type": "integer"},
                    "live": {"type": "integer"},
                    "stale": {"type": "integer"},
                }
            ),
            "secrets": _array(
                _obj(
                    {
                        "name": _str(),
                        "versions": _array(
                            _obj(
                                {
                                    "version_id": _str(),
                                    "stage": {"type": ["string", "null"]},
                                    "instances": _array(_str()),
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
        ("path", "instances", "counts", "secrets"),
    ),
    "AdoptionForgotten": _obj(
        {"path": _str(), "instance_id": _str(), "forgotten": {"const": True}},
        ("path", "instance_id", "forgotten"),
    ),
    "IamPolicy": _POLICY,
    "AuditRows": _obj(
        {
            "rows": _array(
                _obj(
                    {
                        "seq": {"type": "integer"},
                        "at": TIME,
                        "principal": _str(),
                        "claimed": _str(),
                        "source_ip": _str(),
                        "action": _str(),
                        "target": _str(),
                        "outcome": _str(),
                        "status": {"type": "integer"},
                        "request_id": _str(),
                        "replica": _str(),
                        "hash": _str(),
                    },
                    ("seq", "at", "principal", "action", "target", "outcome", "status"),
                )
            )
        },
        ("rows",),
    ),
    "AuditVerified": _obj(
        {
            "ok": {"type": "boolean"},
            "checked": {"type": "integer"},
            "first_broken_seq": {"type": ["integer", "null"]},
        },
        ("ok", "checked", "first_broken_seq"),
    ),
    "Expiring": _obj(
        {
            "days": {"type": "integer"},
            "secrets": _array(
                _obj({"path": _str(), "name": _str(), "kind": _str(), "expires_at": TIME})
            ),
        },
        ("days", "secrets"),
    ),
    "Share": _obj({"secret": _str(), "to": _str()}, ("secret", "to")),
    "Unshared": _obj(
        {"secret": _str(), "to": _str(), "removed_refs": {"type": "integer"}},
        ("secret", "to", "removed_refs"),
    ),
    "Ref": _obj({"path": _str(), "name": _str(), "target": _str()}, ("path", "name", "target")),
    "RefDeleted": _obj(
        {"path": _str(), "name": _str(), "deleted": {"const": True}}, ("path", "name", "deleted")
    ),
    "RotationSummary": _obj(
        {**_ROTATION, "gate": {"type": ["integer", "null"], "description": "1, 2 or none"}},
        ("id", "path", "name", "phase", "mode"),
    ),
    "Rotations": _obj({"rotations": _array(ref("RotationSummary"))}, ("rotations",)),
    "Rotation": _obj(
        {
            **_ROTATION,
            "gate": {
                "anyOf": [
                    {"type": "null"},
                    _obj(
                        {
                            "gate": {"enum": [1, 2]},
                            "target_version": _str(),
                            "met": {"type": "boolean"},
                            "counts": _obj({}, additionalProperties={"type": "integer"}),
                            "held": _array(_GATE_INSTANCE),
                            "waiting": _array(_GATE_INSTANCE),
                            "stale": _array(_GATE_INSTANCE),
                        }
                    ),
                ]
            },
            "stale_after_s": {"type": "integer"},
            "versions": _array(
                _obj(
                    {
                        "version_id": _str(),
                        "stage": _str(),
                        "created_at": TIME,
                        "role": {"enum": ["new", "old", None]},
                    }
                )
            ),
            "events": _array(
                _obj(
                    {
                        "id": {"type": "integer"},
                        "action": _str(),
                        "phase": _str(),
                        "actor": _str(),
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
    "Webhook": _obj(
        {"app": _str(), "url": _str(), "hmac_key": _str(), "signature_header": _str()},
        ("app", "url", "hmac_key"),
        description="hmac_key is shown once: the receiver verifies X-Kmsd-Signature with it",
    ),
    "ConsoleLink": _obj({"path": _str(), "expires_at": TIME}, ("path", "expires_at")),
    "Health": _obj(
        {
            "status": {"enum": ["ok", "degraded"]},
            "database": {"type": "boolean"},
            "audit_writer": {"type": "boolean"},
            "listen": {"type": "boolean"},
        },
        ("status", "database", "audit_writer", "listen"),
    ),
    "OpenApi": _obj({"openapi": _str()}, ("openapi",)),
}

# One example per request body: documentation, and what schemathesis sends first (the tests
# seed the nodes and secrets these name).
EXAMPLES: dict[str, Any] = {
    "BindingRequest": {
        "principal": "arn:aws:iam::123456789012:role/payments-host-*",
        "path": "prod/payments",
        "permission": "read",
    },
    "PutSecretRequest": {
        "kind": "json",
        "value": {"user": "payments", "password": "example-only"},
        "description": "the database login",
    },
    "GenerateRequest": {"use": "signing"},
    "DataKeyRequest": {"cmk": "alias/payments", "period_days": 182},
    "WatchRequest": {
        "path": "prod/payments/us-east-1",
        "path_version": 0,
        "instance_id": "i-0abc1234",
        "app_process_ids": ["4242"],
        "held": {},
    },
    "ShareRequest": {"secret": "prod/payments/api-key", "to": "prod/billing"},
    "RefRequest": {"target": "prod/payments/api-key"},
    "RotationStartRequest": {
        "path": "prod/payments",
        "name": "db",
        "value": {"user": "payments", "password": "rotated"},
        "mode": "manual",
    },
    "RotationCommandRequest": {"force": False},
    "WebhookRequest": {"url": "https://hooks.example.com/kmsd"},
}
SCHEMAS: dict[str, Schema] = {
    **{
        name: {**s, "examples": [EXAMPLES[name]]} if name in EXAMPLES else s
        for name, s in REQUESTS.items()
    },
    **ANSWERS,
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
    429: (None, "too many requests: retry after Retry-After"),
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
        "Retry-After": {"description": "seconds, when the replica is stopping", "schema": _str()}
    }
    return out
