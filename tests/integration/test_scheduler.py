"""The rotation scheduler: one leader, due secrets rotated once per expiry, takeover."""

from __future__ import annotations

from typing import Any

import boto3

from kmsd.keys import SCHEDULER
from tests.conftest import REGION, Identity
from tests.integration.conftest import ClientFactory, FakeClock, eventually, sign_in


async def _versions(api: Any, ref: str) -> list[dict[str, Any]]:
    return (await api.ok("GET", f"/v1/secrets/{ref}"))["versions"]  # type: ignore[no-any-return]


async def test_due_secrets_rotate_once_with_two_replicas_and_a_takeover(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str
) -> None:
    clock = FakeClock()
    a = await make_client(clock=clock, scheduler_tick_s=0.02)
    b = await make_client(clock=clock, scheduler_tick_s=0.02)
    api = await sign_in(a, admin, moto_endpoint)
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name=REGION)
    cmk = kms.create_key()["KeyMetadata"]["Arn"]
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    await api.ok("POST", "/v1/generate/prod/pay/sig", json={"use": "signing", "lifetime_days": 30})
    await api.ok("POST", "/v1/datakeys/prod/pay/files", json={"cmk": cmk, "period_days": 30})
    await api.put_json("prod/pay/db", {"p": "x"}, expires_at="2099-01-01T00:00:00Z")
    schedulers = [a.app[SCHEDULER], b.app[SCHEDULER]]
    await eventually(lambda: sum(s.leader for s in schedulers) == 1)
    leader = next(s for s in schedulers if s.leader)
    ticks = leader.ticks
    await eventually(lambda: leader.ticks > ticks + 3)
    assert leader.rotations == 0  # nothing is due yet (lead time 14 days)
    # Twenty days on, both keys are within 14 days of expiry.
    clock.advance(20 * 86400)
    await eventually(lambda: leader.rotations == 2)
    ticks = leader.ticks
    await eventually(lambda: leader.ticks > ticks + 5)  # more ticks, no second rotation
    assert sum(s.rotations for s in schedulers) == 2
    assert [v["stage"] for v in await _versions(api, "prod/pay/sig")] == ["current", "previous"]
    assert len(await _versions(api, "prod/pay/files")) == 2
    assert len(await _versions(api, "prod/pay/db")) == 1  # hand-made: never rotated by kmsd
    # The leader's replica goes away: the other one takes over within a few ticks.
    follower = next(s for s in schedulers if s is not leader)
    await (a if leader is a.app[SCHEDULER] else b).close()
    await eventually(lambda: follower.leader)


async def test_expiring_lists_hand_made_secrets(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str
) -> None:
    api = await sign_in(await make_client(), admin, moto_endpoint)
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    from datetime import UTC, datetime, timedelta

    soon = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    await api.put_json("prod/pay/db", {"p": "x"}, expires_at=soon)
    await api.ok("POST", "/v1/generate/prod/pay/sig", json={"use": "signing", "lifetime_days": 3})
    doc = await api.ok("GET", "/v1/expiring?days=7")
    assert [(s["path"], s["name"]) for s in doc["secrets"]] == [("prod/pay", "db")]
    assert (await api.ok("GET", "/v1/expiring?days=1"))["secrets"] == []


async def test_a_lifetime_shorter_than_the_lead_rotates_once_per_half_life(
    make_client: ClientFactory, admin: Identity, moto_endpoint: str
) -> None:
    client = await make_client(scheduler_tick_s=0.02)
    api = await sign_in(client, admin, moto_endpoint)
    await api.ok("PUT", "/v1/nodes/prod/pay?parents=true")
    await api.ok("POST", "/v1/generate/prod/pay/pw", json={"use": "password", "lifetime_days": 3})
    scheduler = client.app[SCHEDULER]
    await eventually(lambda: scheduler.leader)
    ticks = scheduler.ticks
    await eventually(lambda: scheduler.ticks > ticks + 10)
    assert scheduler.rotations == 0  # 3-day key, 14-day lead: due only after 1.5 days
    assert len(await _versions(api, "prod/pay/pw")) == 1
