"""kmsagent's pure parts: what to fetch, the whole view, rendering, process reads, backoff."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from kmsagent.state import (
    BadDocument,
    ProcessReads,
    build_view,
    fetches,
    keys_of,
    missing,
    render_all,
    render_datakeys,
    render_version,
)
from kmsagent.sync import Backoff, PathState

SM = "arn:aws:secretsmanager:us-east-1:123456789012:secret:kmsd/prod/shop/db-AbCdEf"
CERT = "arn:aws:secretsmanager:us-east-1:123456789012:secret:kmsd/prod/shop/tls-XyZ"
CMK = "arn:aws:kms:us-east-1:123456789012:key/1234abcd"
BLOB_NEW = base64.b64encode(b"ciphertext-new").decode()
BLOB_OLD = base64.b64encode(b"ciphertext-old").decode()


def doc(version: int = 7, **changes: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "path": "prod/shop/eu",
        "path_version": version,
        "hash": f"h{version}",
        "secrets": [
            {
                "name": "db",
                "kind": "json",
                "source": "prod/shop",
                "overrides": [],
                "sm_arn": SM,
                "expires_at": "2027-01-01T00:00:00+00:00",
                "versions": [
                    {"version_id": "v2", "stage": "current"},
                    {"version_id": "v3", "stage": "pending"},
                    {"version_id": "v1", "stage": "previous"},
                ],
            },
            {
                "name": "tls",
                "kind": "binary",
                "source": "prod/shop/eu",
                "overrides": [],
                "sm_arn": CERT,
                "expires_at": None,
                "versions": [{"version_id": "c1", "stage": "current"}],
            },
            {
                "name": "files",
                "kind": "datakey",
                "source": "prod/shop",
                "overrides": [],
                "sm_arn": None,
                "expires_at": None,
                "cmk_arn": CMK,
                "encryption_context": {"kmsd:path": "prod/shop", "kmsd:name": "files"},
                "versions": [
                    {
                        "version_id": "k2",
                        "stage": "current",
                        "created_at": "2026-06-01T00:00:00+00:00",
                        "ciphertext_blob": BLOB_NEW,
                    },
                    {
                        "version_id": "k1",
                        "stage": "deprecated",  # kmsd keeps old periods' keys for old data
                        "created_at": "2025-12-01T00:00:00+00:00",
                        "ciphertext_blob": BLOB_OLD,
                    },
                ],
            },
        ],
    }
    d.update(changes)
    return d


VALUES: dict[tuple[str, str], str | bytes] = {
    (SM, "v1"): '{"password": "one"}',
    (SM, "v2"): '{"password": "two"}',
    (SM, "v3"): '{"password": "three"}',
    (CERT, "c1"): b"\x30\x82cert",
    (CMK, "k2"): b"K" * 32,
    (CMK, "k1"): b"k" * 32,
}


def test_every_version_is_fetched_sm_ones_with_their_staging_label() -> None:
    got = {(f.key, f.service, f.stage) for f in fetches(doc())}
    assert got == {
        ((SM, "v2"), "secretsmanager", "current"),
        ((SM, "v3"), "secretsmanager", "pending"),
        ((SM, "v1"), "secretsmanager", "previous"),
        ((CERT, "c1"), "secretsmanager", "current"),
        ((CMK, "k2"), "kms", "current"),
        ((CMK, "k1"), "kms", "deprecated"),  # an old period's key: KMS needs no label
    }
    labels = {f.version_id: f.label for f in fetches(doc()) if f.service == "secretsmanager"}
    assert labels == {
        "v2": "AWSCURRENT",
        "v3": "AWSPENDING",
        "v1": "AWSPREVIOUS",
        "c1": "AWSCURRENT",
    }


def test_data_keys_are_decrypted_with_their_blob_and_context() -> None:
    (k2,) = [f for f in fetches(doc()) if f.version_id == "k2"]
    assert k2.ciphertext == b"ciphertext-new"
    assert k2.cmk_arn == CMK
    assert dict(k2.context) == {"kmsd:path": "prod/shop", "kmsd:name": "files"}


def test_only_versions_not_cached_are_fetched() -> None:
    have = {k: v for k, v in VALUES.items() if k != (SM, "v3")}
    assert [f.key for f in missing(doc(), have)] == [(SM, "v3")]
    assert missing(doc(), VALUES) == []


def test_a_version_shared_by_two_entries_is_fetched_once() -> None:
    d = doc()
    d["secrets"].append({**d["secrets"][0], "name": "db-alias"})
    keys = [f.key for f in missing(d, {})]
    assert len(keys) == len(set(keys)) == 6


def test_the_view_holds_every_value_in_kmsds_order() -> None:
    view = build_view(doc(), VALUES)
    assert (view.path, view.path_version, view.hash) == ("prod/shop/eu", 7, "h7")
    db = view.secrets["db"]
    assert [v.version_id for v in db.versions] == ["v2", "v3", "v1"]
    assert db.current is not None
    assert db.current.value == '{"password": "two"}'
    assert db.at("pending") is not None
    assert db.at("revoked") is None
    assert view.held() == {"db": "v2", "tls": "c1", "files": "k2"}


def test_a_value_missing_from_the_cache_cannot_be_built() -> None:
    with pytest.raises(KeyError):
        build_view(doc(), {k: v for k, v in VALUES.items() if k != (CERT, "c1")})


@pytest.mark.parametrize(
    "bad",
    [
        {"secrets": None},
        {"path_version": "7"},
        {"path_version": True},
        {"path": ""},
        {"secrets": [{"name": "x", "kind": "json", "versions": []}]},  # no sm_arn
        {
            "secrets": [
                {"name": "x", "kind": "json", "sm_arn": SM, "versions": [{"version_id": "v"}]}
            ]
        },
        {
            "secrets": [
                {
                    "name": "x",
                    "kind": "json",
                    "sm_arn": SM,
                    "versions": [{"version_id": "v", "stage": "revoked"}],
                }
            ]
        },
        {
            "secrets": [
                {
                    "name": "k",
                    "kind": "datakey",
                    "cmk_arn": CMK,
                    "versions": [
                        {"version_id": "k", "stage": "current", "ciphertext_blob": "not base64!"}
                    ],
                }
            ]
        },
    ],
)
def test_documents_the_agent_cannot_use_are_refused(bad: dict[str, Any]) -> None:
    def use(d: dict[str, Any]) -> None:
        """What the agent does with a document: list the fetches, then build the view."""
        missing(d, {})
        build_view(d, VALUES)

    with pytest.raises(BadDocument):
        use(doc(**bad))


def test_rendering_json_binary_and_data_keys() -> None:
    view = build_view(doc(), VALUES)
    everything = render_all(view)
    assert everything["path_version"] == 7
    assert everything["secrets"]["db"] == {
        "name": "db",
        "kind": "json",
        "version_id": "v2",
        "stage": "current",
        "value": {"password": "two"},
        "expires_at": "2027-01-01T00:00:00+00:00",
    }
    assert base64.b64decode(everything["secrets"]["tls"]["value_base64"]) == b"\x30\x82cert"
    assert everything["secrets"]["files"]["version_id"] == "k2"  # the newest key
    keys = render_datakeys(view.secrets["files"])
    assert [k["version_id"] for k in keys["keys"]] == ["k2", "k1"]
    assert base64.b64decode(keys["keys"][1]["value_base64"]) == b"k" * 32
    assert keys["keys"][0]["created_at"] == "2026-06-01T00:00:00+00:00"


def test_a_json_secret_that_is_not_json_is_served_as_text() -> None:
    view = build_view(doc(), {**VALUES, (SM, "v2"): "plain text"})
    db = view.secrets["db"]
    assert db.current is not None
    assert render_version(db, db.current)["value"] == "plain text"


def test_values_no_view_uses_can_be_dropped() -> None:
    view = build_view(doc(), VALUES)
    assert keys_of([view]) == set(VALUES)
    assert keys_of([]) == set()


def test_process_reads_report_what_each_process_last_read() -> None:
    reads = ProcessReads(forget_after=60, limit=2)
    assert reads.record("p", "101", {"db": "v1"}, now=0) is True
    assert reads.record("p", "101", {"db": "v1"}, now=1) is False  # nothing new to report
    assert reads.record("p", "101", {"tls": "c1"}, now=2) is True
    assert reads.report("p", now=3) == {"101": {"db": "v1", "tls": "c1"}}
    assert reads.report("other", now=3) == {}
    reads.record("p", "102", {"db": "v2"}, now=4)
    reads.record("p", "103", {"db": "v2"}, now=5)  # over the limit: the least recent goes
    assert set(reads.report("p", now=6)) == {"102", "103"}
    assert reads.report("p", now=64.5) == {"103": {"db": "v2"}}  # 102 silent for > 60 s


def test_backoff_grows_is_jittered_capped_and_honours_retry_after() -> None:
    backoff = Backoff(base=1.0, cap=8.0)
    delays = [backoff.next() for _ in range(8)]
    bounds = [(0.5, 1.0), (1.0, 2.0), (2.0, 4.0)] + [(4.0, 8.0)] * 5
    assert all(lo <= d <= hi for d, (lo, hi) in zip(delays, bounds, strict=True)), delays
    assert backoff.next(hint=30.0) == 30.0
    backoff.reset()
    assert 0.5 <= backoff.next() <= 1.0


def test_cache_age_is_zero_while_kmsd_holds_the_poll_and_grows_when_it_is_away() -> None:
    state = PathState("prod/shop")
    assert state.age(100.0) is None  # nothing to serve yet
    state.view = build_view(doc(), VALUES)
    state.confirmed_at = 100.0
    state.upstream, state.polling = "ok", True
    assert state.age(150.0) == 0.0
    state.polling = False
    assert state.age(150.0) == 50.0
    state.upstream, state.polling = "unreachable", True
    assert state.age(160.0) == 60.0
