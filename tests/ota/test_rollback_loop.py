"""Issue 19 finding 3: a rollback followed by a new rollout must not make devices loop.

Boards (tests/ota/board.py) decide like the shipped updater and read both OTA topics from
the broker's retained store on every reboot. After release 1.1.0, 1.2.0, a rollback to 1.1.0
and a new rollout of 1.3.0, each board must have changed version exactly four times, however
often it reboots afterwards, on the embedded amqtt and on Mosquitto; and `ota status` may say
completed only while the boards report running the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from picofleet.core.credentials import FleetKeys
from picofleet.core.settings import Settings
from picofleet.core.signing import Signer
from picofleet.core.topics import Kind
from tests.conftest import RunningHub, mosquitto_available, need, running_hub
from tests.helpers import Client, startup_body, wait_for
from tests.ota.board import Board
from tests.ota.conftest import app_source, picofleet, picofleet_json, wait_state
from tests.ota.test_rollouts import retained

KEYS = ["LOOP-A", "LOOP-B", "LOOP-C"]
EXPECTED = [("1.0.0", "1.1.0"), ("1.1.0", "1.2.0"), ("1.2.0", "1.1.0"), ("1.1.0", "1.3.0")]
REBOOTS = 4  # forced power cycles after the new rollout, each a full re-read of retained meta


@pytest.fixture(params=["amqtt", "mosquitto"])
async def any_hub(
    request: pytest.FixtureRequest, settings: Settings, keys: FleetKeys, pool: asyncpg.Pool
) -> AsyncIterator[RunningHub]:
    s = settings
    if request.param == "mosquitto":
        need(mosquitto_available(), "mosquitto")
        # Mosquitto admits only devices it was configured with: they are known beforehand.
        await pool.executemany(
            "INSERT INTO device (device_key, device_type) VALUES ($1, 'pico_w')",
            [(k,) for k in KEYS],
        )
        s = settings.model_copy(update={"broker": "mosquitto"})
    async with running_hub(s, keys, stop_timeout=30) as hub:
        yield hub


@pytest.fixture
async def boards(any_hub: RunningHub, signer: Signer) -> AsyncIterator[list[Board]]:
    made = [
        Board(
            k,
            port=any_hub.mqtt_port,
            keys=any_hub.keys,
            topics=any_hub.topics,
            public_key=signer.public_raw,
        )
        for k in KEYS
    ]
    try:
        for b in made:
            await asyncio.to_thread(b.start)
        yield made
    finally:
        for b in made:
            await asyncio.to_thread(b.stop)


@contextlib.asynccontextmanager
async def operator(hub: RunningHub) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {hub.keys.operator_token}"}
    async with httpx.AsyncClient(base_url=hub.http, headers=headers, timeout=30) as c:
        yield c


async def post(api: httpx.AsyncClient, path: str, **body: Any) -> Any:
    r = await api.post(path, json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def provisioned(pool: asyncpg.Pool, keys: list[str] = KEYS) -> None:
    async def check() -> bool:
        n = await pool.fetchval(
            "SELECT count(*) FROM device WHERE device_key = ANY($1) AND provisioned_at IS NOT NULL",
            keys,
        )
        return bool(n == len(keys))

    await wait_for(check, timeout=20)


async def on_version(boards: list[Board], version: str) -> None:
    async def check() -> bool:
        return all(b.firmware == version for b in boards)

    await wait_for(check, timeout=30)


def manifest_of(payload: bytes | None) -> dict[str, Any] | None:
    return None if not payload else json.loads(json.loads(payload)["manifest"])


async def release_three_and_roll_out_two(
    api: httpx.AsyncClient, pool: asyncpg.Pool, boards: list[Board]
) -> None:
    """Releases 1.1.0, 1.2.0 and 1.3.0; 1.1.0 then 1.2.0 rolled out to every board."""
    for v in ("1.1.0", "1.2.0", "1.3.0"):
        r = await api.post(
            "/api/ota/releases",
            params={"version": v, "device_type": "pico_w"},
            content=app_source(v),
        )
        assert r.status_code == 201, r.text
    for v in ("1.1.0", "1.2.0"):
        ro = await post(api, "/api/ota/rollouts", version=v, waves=[100], soak_s=0)
        await wait_state(pool, ro["id"], "completed")
        await on_version(boards, v)


@pytest.mark.parametrize("kind", ["waves", "channel"])
async def test_rollback_then_new_rollout_changes_each_version_once(
    any_hub: RunningHub,
    boards: list[Board],
    pool: asyncpg.Pool,
    settings: Settings,
    kind: str,
) -> None:
    hub = any_hub
    await provisioned(pool)
    async with operator(hub) as api:
        await release_three_and_roll_out_two(api, pool, boards)
        rb = await post(api, "/api/ota/rollback", device_type="pico_w")
        assert (rb["from_version"], rb["version"]) == ("1.2.0", "1.1.0")
        await wait_state(pool, rb["id"], "completed")
        await on_version(boards, "1.1.0")

        how = {"waves": [100]} if kind == "waves" else {"channel": "stable"}
        new = await post(api, "/api/ota/rollouts", version="1.3.0", soak_s=0, **how)

    # The boards take 1.3.0 once (on today's code they flip between 1.3.0 and the
    # rollback's 1.1.0 from here on), and power cycles afterwards change nothing.
    await wait_for(
        lambda: asyncio.sleep(0, all("1.3.0" in b.versions() for b in boards)), timeout=30
    )
    for _ in range(REBOOTS):
        await asyncio.sleep(0.5)
        for b in boards:
            await asyncio.to_thread(b.reboot)
    await asyncio.sleep(1.0)
    changes = {b.key: b.installs for b in boards}
    assert changes == dict.fromkeys(KEYS, EXPECTED), {k: len(v) for k, v in changes.items()}
    assert all(b.boots >= len(EXPECTED) + REBOOTS + 1 for b in boards)

    # The hub agrees, and says so only because the boards report running 1.3.0.
    await wait_state(pool, new["id"], "completed")
    status = await picofleet_json(settings, "ota", "status", "1.3.0")
    [row] = status["rollouts"]
    assert (row["state"], row["devices"], row["running"]) == ("completed", 3, 3)
    assert {d["device_key"]: d["running_version"] for d in status["devices"]} == dict.fromkeys(
        KEYS, "1.3.0"
    )
    rc, table, err = await picofleet(settings, "ota", "status", COLUMNS="200")
    assert rc == 0, err
    assert "running" in table and "runs" in table and table.count("1.3.0") >= len(KEYS) + 1
    reports = await pool.fetch(
        "SELECT device_key, count(*) AS n FROM deploy_event WHERE source = 'ota'"
        " AND state = 'booted_ok' GROUP BY device_key"
    )
    assert {r["device_key"]: r["n"] for r in reports} == dict.fromkeys(KEYS, len(EXPECTED))

    # What the broker holds now is exactly what each board should run: no rollback left.
    chan = manifest_of(await retained(hub, hub.topics.ota_channel("pico_w", "stable")))
    assert chan is not None and (chan["version"], chan["action"]) == ("1.3.0", "install")
    for k in KEYS:
        own = manifest_of(await retained(hub, hub.topics.device(k, Kind.OTA)))
        if kind == "channel":
            assert own is None, (k, own)
        else:
            assert own is not None and (own["version"], own["action"]) == ("1.3.0", "install")


async def test_completed_only_while_the_members_run_the_target(
    hub: RunningHub, pool: asyncpg.Pool, settings: Settings, signer: Signer
) -> None:
    """A member that booted the target and then reports running another version holds the
    rollout open: "completed" means the devices run it now, not that they once did."""
    key = "DRIFT-1"
    dev = Client(hub.mqtt_port, key, hub.keys.device_password(key))
    assert await asyncio.to_thread(dev.connect)
    startup = startup_body(hub.keys, key, firmware="1.0.0", device_type="pico_w")
    await asyncio.to_thread(dev.publish, hub.topics.device(key, Kind.STARTUP), json.dumps(startup))
    await provisioned(pool, [key])
    seq = 0

    async def report(state: str, version: str, rollout: str | None) -> None:
        nonlocal seq
        seq += 1
        body = {"version": version, "state": state, "seq": seq, "rollout": rollout}
        await asyncio.to_thread(
            dev.publish, hub.topics.device(key, Kind.OTA_STATUS), json.dumps(body)
        )

    async def telemetry(n: int) -> None:
        for _ in range(n):
            body = {"v": 1, "seq": seq * 100 + n, "readings": [{"type": "uptime_s", "value": n}]}
            await asyncio.to_thread(
                dev.publish, hub.topics.device(key, Kind.TELEMETRY), json.dumps(body)
            )
            n -= 1

    async with operator(hub) as api:
        r = await api.post(
            "/api/ota/releases",
            params={"version": "1.1.0", "device_type": "pico_w"},
            content=app_source("1.1.0"),
        )
        assert r.status_code == 201, r.text
        ro = await post(
            api, "/api/ota/rollouts", version="1.1.0", waves=[100], soak_s=0, min_devices=1
        )
    rid = str(ro["id"])
    member = "SELECT * FROM ota_rollout_device WHERE rollout_id = $1"
    await wait_for(lambda: pool.fetchval(member.replace("*", "offered_at"), ro["id"]))
    for state in ("received", "applied", "booted_ok"):
        await report(state, "1.1.0", rid)
    # ... and then it runs 1.0.0 again (a USB reflash, a restored backup, a stale meta).
    await report("booted_ok", "1.0.0", None)
    await telemetry(3)
    await wait_for(lambda: pool.fetchval(member.replace("*", "healthy_at"), ro["id"]))
    await asyncio.sleep(1.0)  # ten announcer ticks
    assert (await pool.fetchrow(member, ro["id"]))["state"] == "booted_ok"
    assert (await pool.fetchval("SELECT state FROM ota_rollout WHERE id = $1", ro["id"])) == (
        "running"
    )
    [row] = (await picofleet_json(settings, "ota", "status", "1.1.0"))["rollouts"]
    assert (row["state"], row["booted_ok"], row["running"]) == ("running", 1, 0)

    # It boots 1.1.0 again and says so: now the rollout is done.
    await report("booted_ok", "1.1.0", rid)
    await telemetry(2)
    await wait_state(pool, ro["id"], "completed")
    status = await picofleet_json(settings, "ota", "status", "1.1.0")
    assert (status["rollouts"][0]["running"], status["devices"][0]["running_version"]) == (
        1,
        "1.1.0",
    )
    dev.close()


@pytest.mark.parametrize("kind", ["waves", "channel"])
async def test_new_rollout_supersedes_a_rollback_still_under_way(
    hub: RunningHub, pool: asyncpg.Pool, signer: Signer, kind: str
) -> None:
    """A board away during the rollback comes back after the next rollout started: it goes
    straight to the new release, never through the rollback's, and the rollback ends."""
    made = [
        Board(k, port=hub.mqtt_port, keys=hub.keys, topics=hub.topics, public_key=signer.public_raw)
        for k in KEYS
    ]
    for b in made:
        await asyncio.to_thread(b.start)
    away = made[0]
    try:
        await provisioned(pool)
        async with operator(hub) as api:
            await release_three_and_roll_out_two(api, pool, made)
            await asyncio.to_thread(away.stop)
            rb = await post(api, "/api/ota/rollback", device_type="pico_w")
            await on_version(made[1:], "1.1.0")
            assert (await rollout_row(pool, rb["id"]))["state"] == "running"  # one is away
            how = {"waves": [100]} if kind == "waves" else {"channel": "stable"}
            new = await post(api, "/api/ota/rollouts", version="1.3.0", soak_s=0, **how)
        assert new["superseded"] == [rb["id"]]
        old = await rollout_row(pool, rb["id"])
        assert (old["state"], old["reason"]) == ("aborted", f"superseded by rollout {new['id']}")
        states = await pool.fetch(
            "SELECT device_key, state, reason FROM ota_rollout_device WHERE rollout_id = $1",
            rb["id"],
        )
        assert {r["device_key"]: (r["state"], r["reason"]) for r in states}[away.key] == (
            "skipped",
            "superseded",
        )

        await asyncio.to_thread(away.start)
        await wait_state(pool, new["id"], "completed", timeout=30)
        for _ in range(2):
            for b in made:
                await asyncio.to_thread(b.reboot)
        await asyncio.sleep(1.0)
        assert away.installs == [("1.0.0", "1.1.0"), ("1.1.0", "1.2.0"), ("1.2.0", "1.3.0")]
        assert {b.key: b.installs for b in made[1:]} == {b.key: EXPECTED for b in made[1:]}
    finally:
        for b in made:
            await asyncio.to_thread(b.stop)


async def rollout_row(pool: asyncpg.Pool, rollout_id: int) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM ota_rollout WHERE id = $1", rollout_id)
    assert row is not None
    return row
