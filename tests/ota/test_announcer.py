"""The announcer's retained meta and the status-report writer, against the running hub."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import asyncpg
import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from picofleet.core.signing import Signer
from picofleet.core.topics import Kind
from tests.conftest import RunningHub
from tests.helpers import Client, wait_for
from tests.ota.conftest import release, rollout, spawn, wait_state
from tests.ota.fleet import Fleet


async def test_channel_meta_is_retained_signed_and_verifiable(
    hub: RunningHub, api: httpx.AsyncClient, signer: Signer, pool: asyncpg.Pool
) -> None:
    rel = await release(api, "1.1.0")
    ro = await rollout(api, version="1.1.0", channel="canary")

    # A device subscribing afterwards (with its own credentials) gets the retained meta.
    key = "AI-OTA001"
    topic = hub.topics.ota_channel("pico_w", "canary")

    async def retained() -> list[tuple[str, bytes]]:
        c = Client(hub.mqtt_port, key, hub.keys.device_password(key), client_id=f"t-{key}")
        assert await asyncio.to_thread(c.connect)
        assert (await asyncio.to_thread(c.subscribe, f"{hub.topics.prefix}/ota/#")) == [1]
        await asyncio.sleep(0.3)
        c.close()
        return [m for m in c.messages if m[0] == topic]

    msgs = await wait_for(retained, timeout=10, interval=0.2)
    meta = json.loads(msgs[-1][1])
    assert set(meta) == {"manifest", "sig", "key_id"}
    assert meta["key_id"] == signer.key_id
    pub = Ed25519PublicKey.from_public_bytes(signer.public_raw)
    pub.verify(base64.b64decode(meta["sig"]), meta["manifest"].encode())  # raises if bad
    manifest = json.loads(meta["manifest"])
    assert manifest == {
        "version": "1.1.0",
        "device_type": "pico_w",
        "channel": "canary",
        "sha256": rel["sha256"],
        "size": rel["size"],
        "artifact_url": rel["artifact_url"],
        "created_at": manifest["created_at"],
        "rollout": str(ro["id"]),
        "action": "install",
    }
    assert abs(manifest["created_at"] - time.time()) < 60
    async with httpx.AsyncClient() as anon:
        assert (await anon.get(manifest["artifact_url"])).status_code == 200

    # Channel rollouts are tracked like any other: no devices yet, so it completes.
    await wait_state(pool, ro["id"], "completed")


async def test_late_or_duplicate_reports_never_move_state_backwards(
    hub: RunningHub, api: httpx.AsyncClient, fleet: Fleet, pool: asyncpg.Pool
) -> None:
    [dev] = await spawn(fleet, pool, ["AI-SEQ001"])
    dev.alive = False  # scripted by hand below
    await release(api, "1.1.0")
    ro = await rollout(api, version="1.1.0", channel="stable", timeout_s=60, soak_s=60)
    rid = str(ro["id"])
    dev.report("received", "1.1.0", rid, seq=1)
    dev.report("booted_ok", "1.1.0", rid, seq=5)

    async def member() -> asyncpg.Record | None:
        row = await pool.fetchrow(
            "SELECT state, seq FROM ota_rollout_device WHERE rollout_id = $1", ro["id"]
        )
        return row if row is not None and row["seq"] == 5 else None

    await wait_for(member)
    dev.report("downloading", "1.1.0", rid, seq=3)  # late
    dev.report("booted_ok", "1.1.0", rid, seq=5)  # redelivered
    dev.report("verified", "1.1.0", rid, seq=4)  # late
    dev.report("failed", "1.1.0", rid, "a free text reason", seq=6)  # newer, odd reason
    dev.report("exploded", "1.1.0", rid, seq=7)  # not a state of the contract

    async def logged() -> list[asyncpg.Record] | None:
        rows = await pool.fetch(
            "SELECT state, reason, seq, detail FROM deploy_event"
            " WHERE source = 'ota' ORDER BY seq, id"
        )
        return rows if any(r["seq"] == 6 for r in rows) else None

    rows = await wait_for(logged)
    assert [(r["state"], r["seq"]) for r in rows] == [
        ("received", 1),
        ("downloading", 3),
        ("verified", 4),
        ("booted_ok", 5),
        ("failed", 6),
    ]
    stale = {r["seq"] for r in rows if json.loads(r["detail"]).get("stale")}
    assert stale == {3, 4}
    failed = rows[-1]
    assert failed["reason"] == "unknown"
    assert json.loads(failed["detail"])["reason_text"] == "a free text reason"

    state = await pool.fetchrow("SELECT * FROM ota_device_state WHERE device_key = 'AI-SEQ001'")
    assert (state["state"], state["seq"], state["rollout_id"]) == ("failed", 6, ro["id"])
    m = await pool.fetchrow("SELECT * FROM ota_rollout_device WHERE rollout_id = $1", ro["id"])
    assert (m["state"], m["seq"], m["reason"]) == ("failed", 6, "unknown")

    async def rejected() -> str | None:
        return await pool.fetchval(
            "SELECT e.detail FROM ingest_error e JOIN raw_record r ON r.id = e.raw_id"
            " WHERE r.topic = $1 AND e.code = 'validation_error'",
            hub.topics.device("AI-SEQ001", Kind.OTA_STATUS),
        )

    assert "state must be one of" in await wait_for(rejected)
