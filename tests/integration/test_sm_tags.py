"""The tags hosts' prefix-shaped IAM policies read: written on every secret kmsd creates, and
backfilled once by the reconciler on secrets that lack them (made by an older kmsd)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kmsd.config import Settings
from kmsd.keys import POOL, SM
from kmsd.services.reconcile import backfill_tags, reconcile
from tests.integration.conftest import Api

CHECKED = "SELECT sm_tags_checked_at IS NOT NULL FROM secrets WHERE sm_name = $1"


def tags_of(sm_client: Any, secret_id: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in sm_client.describe_secret(SecretId=secret_id)["Tags"]}


async def test_an_older_secret_gets_the_app_tag_once(api: Api, sm_client: Any) -> None:
    await api.ok("PUT", "/v1/nodes/prod/pay/us?parents=true")
    old = await api.put_json("prod/pay/us/db", {"a": "1"})
    new = await api.put_json("prod/pay/cfg", {"a": "2"})
    sm_client.untag_resource(SecretId=old["sm_arn"], TagKeys=["kmsd:app"])  # as before
    pool, sm = api.client.app[POOL], api.client.app[SM]
    assert await backfill_tags(pool, sm) == 1  # only the old one lacked a tag
    assert tags_of(sm_client, old["sm_arn"]) == {
        "kmsd:app": "prod/pay",
        "kmsd:path": "prod/pay/us",
        "kmsd:name": "db",
    }
    assert tags_of(sm_client, new["sm_arn"])["kmsd:app"] == "prod/pay"
    # Checked once: a tag removed later by hand is not fought over on every pass.
    sm_client.untag_resource(SecretId=old["sm_arn"], TagKeys=["kmsd:app"])
    assert await backfill_tags(pool, sm) == 0
    assert "kmsd:app" not in tags_of(sm_client, old["sm_arn"])


async def test_the_reconciler_runs_the_backfill_and_a_missing_secret_does_not_block_it(
    api: Api, sm_client: Any, settings: Settings
) -> None:
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    gone = await api.put_json("prod/pay/gone", {"a": "1"})
    old = await api.put_json("prod/pay/old", {"a": "2"})
    sm_client.delete_secret(SecretId=gone["sm_arn"], ForceDeleteWithoutRecovery=True)
    sm_client.untag_resource(SecretId=old["sm_arn"], TagKeys=["kmsd:app"])
    pool = api.client.app[POOL]
    await reconcile(pool, api.client.app[SM], timedelta(0))
    assert tags_of(sm_client, old["sm_arn"])["kmsd:app"] == "prod/pay"
    for name in ("gone", "old"):
        assert await pool.fetchval(CHECKED, f"{settings.sm_prefix}prod/pay/{name}")


async def test_a_secret_kmsd_adopts_gets_the_tags_it_lacks(
    api: Api, sm_client: Any, settings: Settings
) -> None:
    # An SM secret with kmsd's name for prod/pay/db, left by an older kmsd (no kmsd:app).
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    left = sm_client.create_secret(
        Name=f"{settings.sm_prefix}prod/pay/db",
        SecretString="{}",
        Tags=[{"Key": "kmsd:path", "Value": "prod/pay"}, {"Key": "kmsd:name", "Value": "db"}],
    )
    put = await api.put_json("prod/pay/db", {"a": "1"})
    assert put["sm_arn"] == left["ARN"]
    assert tags_of(sm_client, left["ARN"])["kmsd:app"] == "prod/pay"
