"""The target an attempt row names, per action and where the call names it (pure table)."""

from __future__ import annotations

from typing import Any

import pytest

from kmsd.domain.audit_target import FROM_BODY, attempt_target, reads_body

CASES: list[tuple[str, dict[str, str], dict[str, str], dict[str, Any] | None, str | None, str]] = [
    # action, URL params, query, body, known path, target
    ("node.create", {"path": "prod/pay"}, {}, None, None, "prod/pay"),
    ("secret.put", {"ref": "prod/pay/db"}, {}, None, None, "prod/pay/db"),
    ("binding.grant", {}, {}, {"path": "prod/pay", "permission": "read"}, None, "prod/pay"),
    ("binding.grant", {}, {}, {"path": "*"}, None, "*"),
    ("binding.grant", {}, {}, {"path": "Prod/../x"}, None, ""),  # refused by the handler
    ("binding.grant", {}, {}, {"path": 7}, None, ""),
    ("binding.grant", {}, {}, None, None, ""),  # no body that parses
    ("rotation.start", {}, {}, {"path": "prod/pay", "name": "db"}, None, "prod/pay/db"),
    ("rotation.start", {}, {}, {"path": "prod/pay"}, None, ""),
    ("rotation.start", {}, {}, {"path": "prod/pay", "name": "A B"}, None, ""),
    ("share.create", {}, {}, {"secret": "prod/pay/db", "to": "prod/x"}, None, "prod/pay/db"),
    ("share.create", {}, {}, {"secret": "db"}, None, ""),
    ("share.delete", {}, {"secret": "prod/pay/db", "to": "prod/x"}, None, None, "prod/pay/db"),
    ("share.delete", {}, {}, None, None, ""),
    (
        "adoption.forget",
        {"path": "prod/pay"},
        {"instance": "i-1"},
        None,
        None,
        "prod/pay instance i-1",
    ),
    ("adoption.forget", {"path": "prod/pay"}, {}, None, None, ""),
    ("binding.revoke", {"id": "7"}, {}, None, "prod/pay", "prod/pay binding 7"),
    ("binding.revoke", {"id": "7"}, {}, None, None, "binding 7"),
    ("rotation.command", {"id": "3", "verb": "abort"}, {}, None, None, "rotation 3: abort"),
    ("outbox.retry", {"id": "5"}, {}, None, None, "outbox 5"),
    ("console.link", {}, {}, None, None, ""),
]


@pytest.mark.parametrize(("action", "params", "query", "body", "known", "target"), CASES)
def test_attempt_target(
    action: str,
    params: dict[str, str],
    query: dict[str, str],
    body: dict[str, Any] | None,
    known: str | None,
    target: str,
) -> None:
    assert attempt_target(action, params, query, body=body, known_path=known) == target


def test_only_body_targets_read_the_body() -> None:
    assert {a for a in ("binding.grant", "rotation.start", "share.create") if reads_body(a)} == set(
        FROM_BODY
    )
    assert not reads_body("secret.put")  # its value is in the body: never parsed for the trail
