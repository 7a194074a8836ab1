"""Building blocks of the OpenAPI document: parameters, answers and one operation."""

from __future__ import annotations

from typing import Any

from kmsd.http.openapi_schemas import NODE_PATH, SECRET_REF, Schema, ref

# Every call outside the public ones may be refused so (no token; no binding or outside the
# allowlist; the audit trail cannot be written, so nothing is done).
GUARDED = (401, 403, 503)
# A call that reads a JSON body may also get these.
BODY = (400, 413, 415)


def param(name: str, where: str, schema: Schema, text: str, *, required: bool = False) -> Schema:
    out: Schema = {"name": name, "in": where, "schema": schema, "description": text}
    if required or where == "path":
        out["required"] = True
    return out


def tail(name: str, pattern: str, text: str, example: str) -> Schema:
    """A tail parameter; its example (a value with slashes) is also what the tests seed."""
    schema = {"type": "string", "pattern": pattern, "examples": [example]}
    text = f"{text}; spans slashes (sent plain or as %2F)"
    return param(name, "path", schema, text) | {"example": example}


def node_param(example: str) -> Schema:
    return tail("path", NODE_PATH, "a node path: namespace[/application[/child...]]", example)


def secret_param(example: str) -> Schema:
    return tail("ref", SECRET_REF, "PATH/NAME: a node path, then the secret's name", example)


def flag(name: str, text: str) -> Schema:
    return param(name, "query", {"type": "boolean", "default": False}, text)


def answer(schema: Schema, text: str) -> Schema:
    return {"description": text, "content": {"application/json": {"schema": schema}}}


def operation(
    op_id: str,
    tag: str,
    summary: str,
    *,
    ok: dict[str, Schema],
    needs: str | None = None,
    params: tuple[Schema, ...] = (),
    body: str | None = None,
    body_required: bool = True,
    errors: tuple[int, ...] = (),
    public: bool = False,
) -> Schema:
    """One operation: its answers, its refusals (problem+json) and who may call it."""
    # 400 for every call: a query parameter holding NUL is refused before any handler runs.
    statuses = {400} | set(errors) | (set() if public else set(GUARDED))
    statuses |= set(BODY) if body else set()
    if any(p["in"] == "path" for p in params):
        statuses.add(404)  # also the router's answer to a value no route matches (a newline)
    responses: dict[str, Any] = dict(ok)
    for status in sorted(statuses):
        responses[str(status)] = {"$ref": f"#/components/responses/{status}"}
    op: Schema = {"operationId": op_id, "tags": [tag], "summary": summary}
    if needs:
        op["description"] = f"Needs the **{needs}** permission."
        op["x-kmsd-permission"] = needs
    if params:
        op["parameters"] = list(params)
    if body:
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": ref(body)}},
        }
    op["responses"] = responses
    if public:
        op["security"] = []
    return op
