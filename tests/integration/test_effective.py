"""Effective sets over HTTP: overrides, path_version moving only for affected paths, hash."""

from __future__ import annotations

from tests.conftest import Identity
from tests.integration.conftest import Api

TREE = [
    "prod/payments/us-east-1/blue",
    "prod/payments/us-east-1/green",
    "prod/payments/eu-west-1",
    "prod/billing",
]


async def _tree(api: Api) -> None:
    for path in TREE:
        await api.ok("PUT", f"/v1/nodes/{path}?parents=true")


async def _versions(api: Api, paths: list[str]) -> dict[str, int]:
    return {p: (await api.effective(p))["path_version"] for p in paths}


ALL_PATHS = [
    "prod/payments",
    "prod/payments/us-east-1",
    "prod/payments/us-east-1/blue",
    "prod/payments/us-east-1/green",
    "prod/payments/eu-west-1",
    "prod/billing",
]


async def test_child_overrides_parent_and_names_its_source(api: Api) -> None:
    await _tree(api)
    app = await api.put_json("prod/payments/db", {"user": "app"})
    await api.put_json("prod/payments/api", {"key": "k"})
    region = await api.put_json("prod/payments/us-east-1/db", {"user": "region"})
    await api.put_json("prod/payments/us-east-1/blue/tls", {"pem": "x"})

    doc = await api.effective("prod/payments/us-east-1/blue")
    by_name = {s["name"]: s for s in doc["secrets"]}
    assert list(by_name) == ["api", "db", "tls"]
    assert by_name["db"]["source"] == "prod/payments/us-east-1"
    assert by_name["db"]["overrides"] == ["prod/payments"]
    (only,) = by_name["db"]["versions"]
    assert (only["version_id"], only["stage"]) == (region["version_id"], "current")
    assert by_name["api"]["source"] == "prod/payments"
    assert by_name["tls"]["source"] == "prod/payments/us-east-1/blue"
    assert all("value" not in s for s in doc["secrets"])

    # A sibling region sees the application's own db, not the override.
    eu = {s["name"]: s for s in (await api.effective("prod/payments/eu-west-1"))["secrets"]}
    assert eu["db"]["versions"][0]["version_id"] == app["version_id"]
    assert set(eu) == {"api", "db"}


async def test_path_version_moves_for_affected_paths_only(api: Api) -> None:
    await _tree(api)
    await api.put_json("prod/payments/db", {"user": "a"})
    await api.put_json("prod/billing/db", {"user": "b"})
    before = await _versions(api, ALL_PATHS)

    # A change at a region touches that region's subtree and nothing else.
    await api.put_json("prod/payments/us-east-1/db", {"user": "c"})
    after = await _versions(api, ALL_PATHS)
    changed = {p for p in ALL_PATHS if after[p] != before[p]}
    assert changed == {
        "prod/payments/us-east-1",
        "prod/payments/us-east-1/blue",
        "prod/payments/us-east-1/green",
    }
    assert all(after[p] > before[p] for p in changed)

    # A change at the application touches every path of the application, not billing.
    await api.put_json("prod/payments/db", {"user": "d"})
    final = await _versions(api, ALL_PATHS)
    assert {p for p in ALL_PATHS if final[p] != after[p]} == set(ALL_PATHS) - {"prod/billing"}

    # Creating a new child node changes nothing for existing paths.
    await api.ok("PUT", "/v1/nodes/prod/payments/us-east-1/red")
    assert await _versions(api, ALL_PATHS) == final


async def test_deleting_a_secret_moves_versions_and_recreated_paths_go_up(api: Api) -> None:
    await _tree(api)
    await api.put_json("prod/payments/us-east-1/blue/tls", {"pem": "x"})
    v1 = (await api.effective("prod/payments/us-east-1/blue"))["path_version"]
    await api.ok("DELETE", "/v1/secrets/prod/payments/us-east-1/blue/tls")
    doc = await api.effective("prod/payments/us-east-1/blue")
    assert doc["secrets"] == []
    assert doc["path_version"] > v1
    await api.ok("DELETE", "/v1/nodes/prod/payments/us-east-1/blue")
    await api.ok("PUT", "/v1/nodes/prod/payments/us-east-1/blue")
    assert (await api.effective("prod/payments/us-east-1/blue"))["path_version"] > doc[
        "path_version"
    ]


async def test_hash_tracks_content_not_path(api: Api) -> None:
    await _tree(api)
    await api.put_json("prod/payments/db", {"user": "a"})
    blue = await api.effective("prod/payments/us-east-1/blue")
    green = await api.effective("prod/payments/us-east-1/green")
    assert len(blue["hash"]) == 64
    # The hash covers the set, not the path: two paths with the same set hash alike.
    assert blue["hash"] == green["hash"]
    await api.put_json("prod/payments/us-east-1/blue/db", {"user": "b"})
    assert (await api.effective("prod/payments/us-east-1/blue"))["hash"] != blue["hash"]
    assert (await api.effective("prod/payments/us-east-1/green"))["hash"] == green["hash"]


async def test_effective_errors(api: Api) -> None:
    await _tree(api)
    status, doc = await api.call("GET", "/v1/effective/prod")
    assert status == 400
    assert "namespace" in doc["detail"]
    status, _ = await api.call("GET", "/v1/effective/prod/payments/nowhere")
    assert status == 404
    status, _ = await api.call("GET", "/v1/effective/prod/Payments")
    assert status == 400


async def test_reader_may_read_effective_but_not_write(
    api: Api, reader_api: Api, reader: Identity
) -> None:
    await _tree(api)
    await api.put_json("prod/payments/db", {"user": "a"})
    assert (await reader_api.call("GET", "/v1/effective/prod/payments"))[0] == 403
    await api.grant(reader.arn, "prod/payments", "read")
    doc = await reader_api.effective("prod/payments/us-east-1")
    assert [s["name"] for s in doc["secrets"]] == ["db"]
    status, problem = await reader_api.call(
        "PUT", "/v1/secrets/prod/payments/db", json={"kind": "json", "value": {"x": "1"}}
    )
    assert status == 403
    assert "may not edit 'prod/payments'" in problem["detail"]
    assert (await reader_api.call("GET", "/v1/effective/prod/billing"))[0] == 403
    assert (await reader_api.call("PUT", "/v1/nodes/prod/other"))[0] == 403
    assert (await reader_api.call("DELETE", "/v1/nodes/prod/billing?recursive=true"))[0] == 403
