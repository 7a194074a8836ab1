"""The OpenAPI document matches the routes kmsd registers, both ways, and is a valid 3.1 document.

A route added without documentation fails here, and so does documentation of a route that is
gone. ``create_app`` only builds the application (nothing starts until it runs), so this needs
no database.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from kmsd.app import create_app
from kmsd.config import Settings
from kmsd.http.openapi import SCHEMAS, build, document_bytes
from kmsd.http.openapi_schemas import EXAMPLES

METHODS = ("get", "put", "post", "delete", "patch")


def _routes() -> set[tuple[str, str]]:
    app = create_app(
        Settings(
            database_url="postgresql://unused/unused",
            server_id="kmsd-test",
            sts_endpoint="http://127.0.0.1:1",
            aws_region="us-east-1",
        )
    )
    found = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        # aiohttp adds HEAD beside every GET (allow_head): it is the GET without a body.
        if route.method != "HEAD":
            found.add((route.method, resource.canonical))
    return found


def _documented() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in build()["paths"].items()
        for method in item
        if method in METHODS
    }


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    routes, documented = _routes(), _documented()
    assert sorted(routes - documented) == [], "routes missing from kmsd/http/openapi.py"
    assert sorted(documented - routes) == [], "documented routes that kmsd does not register"


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = build()
    assert doc["openapi"].startswith("3.1.")
    validate(doc)


def test_an_invalid_document_is_refused_by_the_validator() -> None:
    """The validator really checks: a parameter in no valid location fails it."""
    doc = build()
    doc["paths"]["/v1/expiring"]["get"]["parameters"][0]["in"] = "body"
    with pytest.raises(OpenAPIValidationError):
        validate(doc)


def test_path_parameters_match_the_template() -> None:
    for path, item in build()["paths"].items():
        names = set(re.findall(r"\{(\w+)\}", path))
        for method, op in item.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, (method, path)


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node)) if node else set()
    return set()


def test_every_schema_is_used_and_every_reference_resolves() -> None:
    doc = build()
    refs = _refs(doc)
    names = {r.rsplit("/", 1)[1] for r in refs if r.startswith("#/components/schemas/")}
    assert names == set(SCHEMAS)


def test_every_refusal_is_problem_json_with_the_rfc_9457_members() -> None:
    doc = build()
    for status, response in doc["components"]["responses"].items():
        content = response["content"]
        assert list(content) == ["application/problem+json"], status
        assert content["application/problem+json"]["example"]["status"] == int(status)
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/auth/aws/login", "post"),
        ("/v1/openapi.json", "get"),
        ("/healthz", "get"),
        ("/metrics", "get"),
        ("/ui/login", "get"),
        ("/ui/signed-out", "get"),
        ("/ui/assets/{name}", "get"),
    ],
)
def test_public_routes_need_no_token(path: str, method: str) -> None:
    from kmsd.http.auth import PUBLIC_ROUTES

    assert path in PUBLIC_ROUTES
    assert build()["paths"][path][method]["security"] == []


def test_protected_routes_answer_401_in_the_document() -> None:
    from kmsd.http.auth import PUBLIC_ROUTES

    for path, item in build()["paths"].items():
        for op in item.values():
            if path not in PUBLIC_ROUTES:
                assert "security" not in op or op["security"], path
                assert "401" in op["responses"], path


def test_bodies_that_refuse_unknown_fields_say_so() -> None:
    """Every request schema is closed: the handlers call json_body(allowed=...)."""
    doc = build()
    for path, item in doc["paths"].items():
        for op in item.values():
            body = op.get("requestBody")
            if body:
                name = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                assert SCHEMAS[name].get("additionalProperties") is False, (path, name)


def test_served_bytes_are_the_document() -> None:
    assert orjson.loads(document_bytes()) == build()


def test_every_example_is_a_valid_request() -> None:
    """The examples are what schemathesis sends first: they must be valid by the document."""
    for name, example in EXAMPLES.items():
        Draft202012Validator(SCHEMAS[name]).validate(example)
    for item in build()["paths"].values():
        for op in item.values():
            for param in op.get("parameters", []):
                if "example" in param:
                    Draft202012Validator(param["schema"]).validate(param["example"])


def test_every_audited_route_has_an_action_name() -> None:
    """An audit row says what was done: no route of the API or the console is "unknown"."""
    from kmsd.http.audit import ACTIONS, AUDITED_PREFIXES, UNAUDITED_PREFIXES

    audited = {
        (method, path)
        for method, path in _routes()
        if path.startswith(AUDITED_PREFIXES) and not path.startswith(UNAUDITED_PREFIXES)
    }
    assert sorted(audited - set(ACTIONS)) == []
