"""Alert lifecycles for scripted scenarios: each opens once, closes once, and is announced
on a real broker exactly at those two moments."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from picofleet.analytics import AlertChanges, AnalyticsSettings, Job, evaluate
from picofleet.broker.embedded import EmbeddedBroker
from picofleet.core.credentials import HUB_USER, OPERATOR_USER, FleetKeys
from picofleet.core.mqttclient import MqttSession, MqttTarget
from picofleet.core.topics import Kind, Topics
from tests.analytics.conftest import MONTH, Feed
from tests.helpers import Client, wait_for

T0 = MONTH + timedelta(days=10)


@dataclass
class Rig:
    """The analytics job publishing through the hub's MQTT role; an operator listening."""

    pool: asyncpg.Pool
    job: Job
    listener: Client

    async def at(self, now: datetime) -> AlertChanges:
        return (await self.job.cycle(now=now)).alerts

    async def alerts(self) -> list[asyncpg.Record]:
        return await self.pool.fetch("SELECT * FROM alert ORDER BY id")

    async def heard(self, n: int) -> list[dict[str, Any]]:
        """Exactly the n announcements expected (and, after a pause, no more)."""

        async def enough() -> bool:
            return len(self.listener.messages) >= n

        await wait_for(enough)
        await asyncio.sleep(0.3)
        assert len(self.listener.messages) == n, self.listener.messages
        out = []
        for topic, payload in self.listener.messages:
            body = json.loads(payload)
            assert topic == Topics().alert(body["kind"])
            out.append(body)
        return out


@pytest.fixture
async def rig(
    pool: asyncpg.Pool, amqtt_broker: EmbeddedBroker, keys: FleetKeys
) -> AsyncIterator[Rig]:
    listener = Client(amqtt_broker.port, OPERATOR_USER, keys.role_password(OPERATOR_USER))
    assert await asyncio.to_thread(listener.connect)
    await asyncio.to_thread(listener.subscribe, Topics().alert("#"))
    session = MqttSession(
        target=MqttTarget("127.0.0.1", amqtt_broker.port),
        username=HUB_USER,
        password=keys.role_password(HUB_USER),
        client_id="analytics-test",
        clean_session=True,
        manual_ack=False,
    )
    settings = AnalyticsSettings(settle_s=0, soil_dry_minutes=60)
    async with session:
        yield Rig(
            pool, Job(pool=pool, settings=settings, topics=Topics(), session=session), listener
        )
    listener.close()


def lifecycle(events: list[dict[str, Any]]) -> list[tuple[str, str | None, str]]:
    return [(e["kind"], e["device"], e["state"]) for e in events]


async def test_battery_dips_and_recovers(rig: Rig, feed: Feed) -> None:
    key = "AI-BATT01"
    steps = [(50.0, []), (15.0, ["open"]), (22.0, []), (12.0, []), (30.0, ["closed"]), (31, [])]
    for i, (pct, want) in enumerate(steps):
        at = T0 + timedelta(minutes=10 * i)
        await feed.readings(key, at, {"battery_charge": pct})
        changes = await rig.at(at + timedelta(minutes=1))
        got = ["open"] * len(changes.opened) + ["closed"] * len(changes.closed)
        assert got == want, (pct, changes)
    (alert,) = await rig.alerts()
    assert (alert["kind"], alert["device_key"], alert["state"]) == ("battery_low", key, "closed")
    assert alert["opened_at"] == T0 + timedelta(minutes=11)
    assert alert["closed_at"] == T0 + timedelta(minutes=41)
    assert json.loads(alert["detail"])["battery_pct"] == 15.0

    # A second dip is a second alert.
    await feed.readings(key, T0 + timedelta(minutes=70), {"battery_charge": 9.0})
    assert len((await rig.at(T0 + timedelta(minutes=71))).opened) == 1

    events = await rig.heard(3)
    assert lifecycle(events) == [
        ("battery_low", key, "open"),
        ("battery_low", key, "closed"),
        ("battery_low", key, "open"),
    ]
    first, closed, second = events
    assert first["id"] == closed["id"] == alert["id"] != second["id"]
    assert first["closed_at"] is None
    assert datetime.fromisoformat(closed["closed_at"]) == T0 + timedelta(minutes=41)
    assert set(first) == {
        "id",
        "kind",
        "subject",
        "device",
        "state",
        "opened_at",
        "closed_at",
        "acked_at",  # an operator's acknowledgement (sql/0075_alert_ack.sql)
        "detail",
    }
    assert first["acked_at"] is None


async def test_device_goes_offline_and_returns(rig: Rig, feed: Feed) -> None:
    key = "AI-OFFL01"
    m = lambda n: T0 + timedelta(minutes=n)  # noqa: E731
    await feed.status(key, "online", received_at=m(0))
    await feed.readings(key, m(1), {"rssi_dbm": -60})
    assert not (await rig.at(m(2))).opened
    await feed.status(key, "offline", received_at=m(3))  # the broker published its last will
    assert len((await rig.at(m(4))).opened) == 1
    assert not (await rig.at(m(5))).opened
    await feed.status(key, "online", received_at=m(6))
    assert len((await rig.at(m(7))).closed) == 1
    # Silent without a last will: offline once nothing came for offline_minutes.
    assert not (await rig.at(m(6 + 14))).opened
    assert len((await rig.at(m(6 + 16))).opened) == 1
    await feed.readings(key, m(25), {"rssi_dbm": -61})
    assert len((await rig.at(m(26))).closed) == 1

    rows = await rig.alerts()
    assert [json.loads(r["detail"])["reason"] for r in rows] == ["last_will", "silent"]
    assert lifecycle(await rig.heard(4)) == [
        ("device_offline", key, s) for s in ("open", "closed", "open", "closed")
    ]


async def test_startup_auth_error_spike(rig: Rig, feed: Feed) -> None:
    now = datetime.now(UTC)  # ingest_error.created_at is the database's clock
    topic = Topics().device("AI-INTRUDER", Kind.STARTUP)
    for i in range(5):
        body = {
            "event_type": "device_startup",
            "serial": "AI-INTRUDER",
            "provision_token": f"{i:064x}",
            "timestamp": int(now.timestamp()),
            "nonce": f"{i:016x}",
        }
        msg = await feed.send(topic, body, received_at=now)
        assert [e.code.value for e in msg.errors] == ["startup_auth_error"]
        if i == 3:
            assert not (await rig.at(now + timedelta(seconds=1))).opened  # 4 < threshold 5
    assert len((await rig.at(now + timedelta(seconds=1))).opened) == 1
    assert not (await rig.at(now + timedelta(minutes=5))).opened
    assert len((await rig.at(now + timedelta(minutes=11))).closed) == 1
    (alert,) = await rig.alerts()
    assert alert["subject"] == "" and alert["device_key"] is None
    assert json.loads(alert["detail"])["devices"] == ["AI-INTRUDER"]
    assert lifecycle(await rig.heard(2)) == [
        ("startup_auth_spike", None, "open"),
        ("startup_auth_spike", None, "closed"),
    ]


async def test_ingest_error_rate(rig: Rig, feed: Feed) -> None:
    now = datetime.now(UTC)
    topic = Topics().device("AI-NOISY1", Kind.TELEMETRY)
    for i in range(12):
        await feed.readings("AI-NOISY1", now, {"temperature_c": 20 + i}, received_at=now)
    for _ in range(4):
        await feed.send(topic, {"v": 1, "readings": "high"}, received_at=now)
    assert not (await rig.at(now)).opened  # 4 of 16: too few messages to judge
    for _ in range(6):
        await feed.send(topic, {"v": 1, "readings": "high"}, received_at=now)
    assert len((await rig.at(now)).opened) == 1  # 10 of 22 = 45 %
    assert len((await rig.at(now + timedelta(minutes=11))).closed) == 1
    (alert,) = await rig.alerts()
    assert json.loads(alert["detail"])["errors"] == 10
    assert lifecycle(await rig.heard(2)) == [
        ("ingest_error_rate", None, "open"),
        ("ingest_error_rate", None, "closed"),
    ]


async def test_soil_too_dry_for_too_long(rig: Rig, feed: Feed) -> None:
    key = "AI-SOIL01"
    m = lambda n: T0 + timedelta(minutes=n)  # noqa: E731
    script = [(0, 40.0), (10, 10.0), (40, 10.0), (70, 12.0)]  # dry since minute 10
    for t, v in script:
        await feed.readings(key, m(t), {"soil_moisture_pct": v})
    assert not (await rig.at(m(69))).opened  # the hour before still reaches back to 40 %
    assert len((await rig.at(m(71))).opened) == 1
    await feed.readings(key, m(80), {"soil_moisture_pct": 18.0})  # watered a little
    assert not (await rig.at(m(81))).closed  # within the hysteresis: stays open
    await feed.readings(key, m(90), {"soil_moisture_pct": 26.0})
    assert len((await rig.at(m(91))).closed) == 1
    assert lifecycle(await rig.heard(2)) == [("soil_dry", key, "open"), ("soil_dry", key, "closed")]


async def test_ota_rollout_halted(rig: Rig, pool: asyncpg.Pool) -> None:
    release = await pool.fetchval(
        "INSERT INTO ota_release (device_type, version, semver, sha256, size, manifest, sig,"
        " key_id) VALUES ('pico_w', '1.2.0', '{1,2,0}', repeat('a', 64), 10, '{}', 's', 'k')"
        " RETURNING id"
    )
    rollout = await pool.fetchval(
        "INSERT INTO ota_rollout (release_id, device_type, version, kind, channel, action,"
        " waves, max_failure_rate, min_booted, min_devices, soak_s, timeout_s, meta)"
        " VALUES ($1, 'pico_w', '1.2.0', 'waves', 'stable', 'install', '{10,100}', 0.2, 0.9,"
        " 1, 60, 600, '{}') RETURNING id",
        release,
    )
    assert not (await rig.at(T0)).opened
    await pool.execute(
        "UPDATE ota_rollout SET state = 'halted', reason = 'failures 3/5' WHERE id = $1", rollout
    )
    assert len((await rig.at(T0)).opened) == 1
    assert not (await rig.at(T0)).opened
    await pool.execute("UPDATE ota_rollout SET state = 'rolled_back' WHERE id = $1", rollout)
    assert len((await rig.at(T0)).closed) == 1
    events = await rig.heard(2)
    assert lifecycle(events) == [
        ("ota_rollout_halted", None, "open"),
        ("ota_rollout_halted", None, "closed"),
    ]
    assert events[0]["subject"] == str(rollout)
    assert events[0]["detail"]["reason"] == "failures 3/5"


async def test_no_duplicate_open_alerts(pool: asyncpg.Pool, feed: Feed) -> None:
    await feed.status("AI-DUP001", "offline", received_at=T0)
    settings = AnalyticsSettings()
    results = await asyncio.gather(*(evaluate(pool, settings, now=T0, wait=True) for _ in range(4)))
    assert sorted(len(r.opened) for r in results) == [0, 0, 0, 1]
    insert = (
        "INSERT INTO alert (kind, subject, device_key, opened_at)"
        " VALUES ('device_offline', 'AI-DUP001', 'AI-DUP001', now())"
    )
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute(insert)
    # Closed alerts do not count: history may hold many.
    await pool.execute("UPDATE alert SET state = 'closed', closed_at = now()")
    await pool.execute(insert)
    assert await pool.fetchval("SELECT count(*) FROM alert") == 2
