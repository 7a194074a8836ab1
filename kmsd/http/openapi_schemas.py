"""Component schemas of kmsd's requests: bodies, name patterns, examples.

Request schemas say exactly what the handlers and ``kmsd.domain`` parsers accept: the same
name rule, the same limits, ``additionalProperties: false`` where the handler refuses an
unknown field (``json_body(allowed=...)``). They are built from the constants those parsers
use, so a changed limit changes the document with it. The answers are in ``openapi_answers``.
"""

from __future__ import annotations

from typing import Any

from kmsd.domain.access import PERMISSIONS, ROOT
from kmsd.domain.names import MAX_DEPTH, SEGMENT_RULE
from kmsd.domain.profile import USES
from kmsd.domain.rotation import MODES
from kmsd.domain.tree import KINDS
from kmsd.domain.watch import MAX_HELD, MAX_PROCESS_IDS, MAX_VERSIONS_PER_SECRET, WATCH_MAX_BODY

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


def string(**kw: Any) -> Schema:
    return {"type": "string", **kw}


def obj(
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


def array(items: Schema, **kw: Any) -> Schema:
    return {"type": "array", "items": items, **kw}


TIME = string(format="date-time")
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
VERSION_ID = string(minLength=1, maxLength=128)
HELD = obj(
    {},
    maxProperties=MAX_HELD,
    propertyNames={"pattern": SEGMENT},
    additionalProperties=VERSION_ID,
    description="secret name -> the version id held",
)

# -- requests ----------------------------------------------------------------------------------

REQUESTS: dict[str, Schema] = {
    "LoginRequest": obj(
        {
            "iam_http_request_method": string(description="the signed request's method: POST"),
            "iam_request_url": string(
                contentEncoding="base64",
                pattern=BASE64,
                description="base64 of the STS endpoint URL",
            ),
            "iam_request_body": string(
                contentEncoding="base64",
                pattern=BASE64,
                description="base64 of Action=GetCallerIdentity&Version=2011-06-15",
            ),
            "iam_request_headers": string(
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
    "BindingRequest": obj(
        {
            "principal": string(
                pattern=ARN_PATTERN,
                description="IAM role or user ARN pattern; '*' only in the name, never across ':'",
            ),
            "path": {
                "anyOf": [string(pattern=NODE_PATH), {"const": ROOT}],
                "description": "path prefix the binding covers, or '*' for everything",
            },
            "permission": {"enum": list(PERMISSIONS)},
            "cidrs": array(
                string(examples=["10.0.0.0/8"]), description="calls only from these networks"
            ),
        },
        ("principal", "path", "permission"),
        closed=True,
    ),
    "PutSecretRequest": {
        **obj(
            {
                "kind": {"enum": list(KINDS), "default": "json"},
                "value": obj(
                    {},
                    minProperties=1,
                    description=f"json secrets: the key/value map (at most {SM_MAX_VALUE_BYTES} "
                    "bytes as JSON)",
                ),
                "value_b64": string(
                    contentEncoding="base64",
                    pattern=BASE64,
                    minLength=1,
                    description=f"binary secrets: the bytes (1 to {SM_MAX_VALUE_BYTES}) in base64",
                ),
                "description": string(maxLength=2048),
                "tags": obj(
                    {},
                    maxProperties=50,
                    propertyNames={"minLength": 1, "maxLength": 128},
                    additionalProperties=string(maxLength=256),
                ),
                "expires_at": string(
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
    "GenerateRequest": obj(
        {
            "use": string(
                description="a use of the security profile; the default profile has "
                + ", ".join(USES)
            ),
            "algorithm": string(description="default: the use's first algorithm"),
            "length": {"type": "integer", "description": "bits (RSA, HMAC) or characters"},
            "lifetime_days": {"type": "integer"},
            "description": string(maxLength=2048),
        },
        ("use",),
        closed=True,
    ),
    "DataKeyRequest": obj(
        {
            "cmk": string(minLength=1, maxLength=2048, description="KMS key id, ARN or alias"),
            "period_days": {"type": "integer", "minimum": 1, "maximum": 3650, "default": 182},
        },
        ("cmk",),
        closed=True,
    ),
    "WatchRequest": obj(
        {
            "path": string(pattern=APP_PATH, description="an application or a node below it"),
            "path_version": {
                "type": "integer",
                "minimum": 0,
                "maximum": 2**63 - 1,
                "default": 0,
                "description": "the version held; 0 if none",
            },
            "instance_id": string(pattern=INSTANCE_ID),
            "role": {
                "enum": ["serving", "observer"],
                "default": "serving",
                "description": "observer: a watcher that serves no application (kmsctl watch); "
                "it is listed but never counted by a rotation's gates",
            },
            "app_process_ids": array(
                {"anyOf": [string(maxLength=64), {"type": "integer"}]},
                maxItems=MAX_PROCESS_IDS,
            ),
            "held": HELD,
            "processes": obj(
                {},
                maxProperties=MAX_PROCESS_IDS,
                propertyNames={"minLength": 1, "maxLength": 64},
                additionalProperties=HELD,
                description="per application process: the version of each secret it last read",
            ),
            "versions": obj(
                {},
                maxProperties=MAX_HELD,
                propertyNames={"pattern": SEGMENT},
                additionalProperties=array(VERSION_ID, maxItems=MAX_VERSIONS_PER_SECRET),
                description="every version of each secret the instance holds",
            ),
            "reports_digest": string(
                pattern="^[0-9a-f]{64}$",
                description="instead of app_process_ids, held, processes and versions (never "
                "with them): the hex sha256 of the JSON of those fields as last sent in full "
                "(keys sorted at every level, no whitespace, UTF-8, process ids as strings). "
                "A digest of reports kmsd does not hold is answered 409 reports-unknown at "
                "once: send them in full",
            ),
        },
        ("path", "instance_id"),
        closed=True,
        description=f"at most {WATCH_MAX_BODY // (1024 * 1024)} MiB (other bodies: 1 MiB)",
    ),
    "ShareRequest": obj(
        {
            "secret": string(pattern=SECRET_REF, description="PATH/NAME of the secret"),
            "to": string(pattern=APPLICATION, description="NAMESPACE/APP"),
        },
        ("secret", "to"),
        closed=True,
    ),
    "RefRequest": obj(
        {"target": string(pattern=SECRET_REF, description="PATH/NAME of a shared secret")},
        ("target",),
        closed=True,
    ),
    "RotationStartRequest": {
        **obj(
            {
                "path": string(pattern=NODE_PATH),
                "name": string(pattern=SEGMENT),
                "value": obj({}, description="the new value of a json secret"),
                "value_b64": string(
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
                        string(pattern=r"^\s*\d+(\.\d+)?[smhdSMHD]?\s*$"),
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
    "RotationCommandRequest": obj({"force": {"type": "boolean", "default": False}}, closed=True),
    "WebhookRequest": obj(
        {"url": string(format="uri", pattern="^https?://", description="an http(s) URL")},
        ("url",),
        closed=True,
    ),
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
REQUEST_SCHEMAS: dict[str, Schema] = {
    name: {**schema, "examples": [EXAMPLES[name]]} if name in EXAMPLES else schema
    for name, schema in REQUESTS.items()
}
