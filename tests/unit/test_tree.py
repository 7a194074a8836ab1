"""Effective-set resolution (kmsd.domain.tree)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from kmsd.domain.tree import (
    NodeSecrets,
    SecretMeta,
    SecretVersion,
    effective_document,
    entry_document,
    resolve,
    set_hash,
    usable_versions,
)

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def ver(version_id: str, stage: str = "current") -> SecretVersion:
    return SecretVersion(version_id, stage, T0)


def meta(name: str, tag: str = "", *versions: SecretVersion) -> SecretMeta:
    """A secret whose ARN records ``tag`` so a test can tell same-named secrets apart."""
    return SecretMeta(
        name=name,
        kind="json",
        sm_arn=f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{tag or name}",
        versions=versions or (ver(f"v-{tag or name}"),),
    )


def node(path: str, *names: str) -> NodeSecrets:
    return NodeSecrets(path, tuple(meta(n, f"{path}:{n}") for n in names))


# Each case: chain, then the expected (name, source, overrides) rows in order.
RESOLVE_CASES = {
    "empty chain": ([], []),
    "app without secrets": ([node("ns/app")], []),
    "app only": (
        [node("ns/app", "db", "api")],
        [("api", "ns/app", ()), ("db", "ns/app", ())],
    ),
    "child overrides parent": (
        [node("ns/app", "db"), node("ns/app/r", "db")],
        [("db", "ns/app/r", ("ns/app",))],
    ),
    "grandchild overrides both": (
        [node("ns/app", "db"), node("ns/app/r", "db"), node("ns/app/r/c", "db")],
        [("db", "ns/app/r/c", ("ns/app/r", "ns/app"))],
    ),
    "grandchild overrides app, middle silent": (
        [node("ns/app", "db"), node("ns/app/r"), node("ns/app/r/c", "db")],
        [("db", "ns/app/r/c", ("ns/app",))],
    ),
    "middle override survives an absent leaf": (
        [node("ns/app", "db"), node("ns/app/r", "db"), node("ns/app/r/c")],
        [("db", "ns/app/r", ("ns/app",))],
    ),
    "disjoint names union": (
        [node("ns/app", "a"), node("ns/app/r", "b"), node("ns/app/r/c", "c")],
        [("a", "ns/app", ()), ("b", "ns/app/r", ()), ("c", "ns/app/r/c", ())],
    ),
    "sorted by name whatever the chain order": (
        [node("ns/app", "zeta", "mid"), node("ns/app/r", "alpha", "mid")],
        [("alpha", "ns/app/r", ()), ("mid", "ns/app/r", ("ns/app",)), ("zeta", "ns/app", ())],
    ),
    "sort is by code point (digits before letters)": (
        [node("ns/app", "b", "a.b", "a-b", "a_b", "1")],
        [(n, "ns/app", ()) for n in sorted(["b", "a.b", "a-b", "a_b", "1"])],
    ),
}


@pytest.mark.parametrize(("chain", "expected"), RESOLVE_CASES.values(), ids=RESOLVE_CASES.keys())
def test_resolve(
    chain: list[NodeSecrets], expected: list[tuple[str, str, tuple[str, ...]]]
) -> None:
    got = resolve(chain)
    assert [(e.secret.name, e.source, e.overrides) for e in got] == expected
    for entry in got:
        # The winning secret is the one attached at ``source``, not a shadowed one.
        assert entry.secret.sm_arn.endswith(f"{entry.source}:{entry.secret.name}")


def test_resolve_names_are_sorted() -> None:
    names = ["q", "b", "z", "a", "m"]
    got = resolve([node("ns/app", *names)])
    assert [e.secret.name for e in got] == sorted(names)


V_CUR = ver("c1", "current")
V_PEND = ver("p1", "pending")
V_PREV = ver("o1", "previous")
V_REV = ver("r1", "revoked")
V_DEP = ver("d1", "deprecated")

USABLE_CASES = {
    "empty": ([], []),
    "only current": ([V_CUR], ["c1"]),
    "revoked and deprecated dropped": ([V_REV, V_DEP], []),
    "order current, pending, previous": ([V_PREV, V_PEND, V_CUR], ["c1", "p1", "o1"]),
    "mixed with dropped stages": ([V_DEP, V_PREV, V_REV, V_PEND, V_CUR], ["c1", "p1", "o1"]),
    "ties broken by version id": (
        [ver("o2", "previous"), V_CUR, ver("o1", "previous")],
        ["c1", "o1", "o2"],
    ),
}


@pytest.mark.parametrize(("versions", "ids"), USABLE_CASES.values(), ids=USABLE_CASES.keys())
def test_usable_versions(versions: list[SecretVersion], ids: list[str]) -> None:
    assert [v.version_id for v in usable_versions(versions)] == ids


def test_usable_versions_with_explicit_stages() -> None:
    got = usable_versions([V_CUR, V_REV, V_DEP], frozenset({"revoked", "current"}))
    assert [v.version_id for v in got] == ["c1", "r1"]


def sample_entry() -> dict[str, object]:
    secret = SecretMeta(
        name="db",
        kind="binary",
        sm_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:kmsd/ns/app/db-AbCdEf",
        versions=(V_PREV, V_REV, V_CUR, V_DEP, V_PEND),
        expires_at=T0,
        description="the database password",
    )
    entry = resolve([NodeSecrets("ns/app", (secret,)), NodeSecrets("ns/app/r", (secret,))])[0]
    return entry_document(entry)


def test_entry_document_shape() -> None:
    assert sample_entry() == {
        "name": "db",
        "kind": "binary",
        "source": "ns/app/r",
        "overrides": ["ns/app"],
        "sm_arn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:kmsd/ns/app/db-AbCdEf",
        "expires_at": "2025-01-02T03:04:05+00:00",
        "versions": [
            {"version_id": "c1", "stage": "current", "created_at": T0.isoformat()},
            {"version_id": "p1", "stage": "pending", "created_at": T0.isoformat()},
            {"version_id": "o1", "stage": "previous", "created_at": T0.isoformat()},
        ],
    }


def test_entry_document_without_expiry() -> None:
    doc = entry_document(resolve([node("ns/app", "x")])[0])
    assert doc["expires_at"] is None


def _keys(obj: object) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


def test_entry_document_never_has_a_value_key() -> None:
    doc = effective_document("ns/app/r", 3, [node("ns/app", "a", "value"), node("ns/app/r", "a")])
    assert "value" not in _keys(doc)
    # A secret *named* "value" is fine; what matters is that no key is called that.
    assert [s["name"] for s in doc["secrets"]] == ["a", "value"]


def _docs() -> list[dict[str, object]]:
    return [entry_document(e) for e in resolve([node("ns/app", "a", "b"), node("ns/app/r", "b")])]


def test_set_hash_is_stable_sha256_hex() -> None:
    h = set_hash(_docs())
    assert h == set_hash(_docs())
    assert len(h) == 64
    assert int(h, 16) >= 0


def test_set_hash_of_empty_set_is_sha256_of_empty_list() -> None:
    assert set_hash([]) == "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"


def test_set_hash_ignores_dict_key_order() -> None:
    docs = _docs()
    reordered = [dict(reversed(list(d.items()))) for d in docs]
    assert list(reordered[0]) != list(docs[0])
    assert set_hash(reordered) == set_hash(docs)


def _with_version(docs: list[dict], field: str, new: str) -> list[dict]:
    out = copy.deepcopy(docs)
    out[0]["versions"][0][field] = new
    return out


@pytest.mark.parametrize(
    ("field", "new"),
    [("version_id", "v-other"), ("stage", "pending")],
)
def test_set_hash_changes_with_version_id_or_stage(field: str, new: str) -> None:
    docs = _docs()
    assert set_hash(_with_version(docs, field, new)) != set_hash(docs)


def test_set_hash_changes_when_resolved_versions_change() -> None:
    def chain(*versions: SecretVersion) -> list[NodeSecrets]:
        return [NodeSecrets("ns/app", (meta("db", "t", *versions),))]

    base = effective_document("ns/app", 1, chain(ver("v1"), ver("v0", "previous")))
    rotated = effective_document("ns/app", 1, chain(ver("v2"), ver("v1", "previous")))
    staged = effective_document("ns/app", 1, chain(ver("v1"), ver("v0", "pending")))
    revoked = effective_document("ns/app", 1, chain(ver("v1"), ver("v0", "revoked")))
    hashes = {d["hash"] for d in (base, rotated, staged, revoked)}
    assert len(hashes) == 4


def test_set_hash_changes_with_source() -> None:
    a = effective_document("ns/app/r", 1, [node("ns/app", "db"), node("ns/app/r")])
    b = effective_document("ns/app/r", 1, [node("ns/app"), node("ns/app/r", "db")])
    assert a["hash"] != b["hash"]


def test_effective_document_shape() -> None:
    chain = [node("ns/app", "db", "api"), node("ns/app/r", "db")]
    doc = effective_document("ns/app/r", 42, chain)
    assert set(doc) == {"path", "path_version", "hash", "secrets"}
    assert doc["path"] == "ns/app/r"
    assert doc["path_version"] == 42
    assert doc["secrets"] == [entry_document(e) for e in resolve(chain)]
    assert doc["hash"] == set_hash(doc["secrets"])
    assert [(s["name"], s["source"], s["overrides"]) for s in doc["secrets"]] == [
        ("api", "ns/app", []),
        ("db", "ns/app/r", ["ns/app"]),
    ]


def test_effective_document_hash_ignores_path_version() -> None:
    chain = [node("ns/app", "db")]
    assert (
        effective_document("ns/app", 1, chain)["hash"]
        == (effective_document("ns/app", 2, chain)["hash"])
    )


def test_effective_document_empty_chain() -> None:
    doc = effective_document("ns/app", 0, [])
    assert doc["secrets"] == []
    assert doc["hash"] == set_hash([])
